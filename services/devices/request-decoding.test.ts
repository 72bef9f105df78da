import { create, fromBinary, toBinary, type DescMessage } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import {
  DeviceEventSchema,
  PublishEventsRequestSchema,
  StreamEventsRequestSchema,
  type DeviceEvent,
} from "../../gen/medmesh/devices/v1/devices_pb.js";
import { deviceDecodeShortcuts } from "./request-decoding.js";

const event = (over: Partial<DeviceEvent> = {}): DeviceEvent =>
  create(DeviceEventSchema, {
    deviceId: "0b6c7c1e-3f7a-4a53-9d5e-2f1e8a9b7c10",
    sequence: 7n,
    clientId: "c-7",
    eventTime: timestampFromDate(new Date("2026-12-03T08:00:00.250Z")),
    readings: { pulse: 61, spo2: 97.5 },
    ...over,
  });

const streamed = deviceDecodeShortcuts.get(StreamEventsRequestSchema)!;
const batch = deviceDecodeShortcuts.get(PublishEventsRequestSchema)!;

describe("the hand readers of DeviceService's event requests", () => {
  it("read what fromBinary reads", () => {
    const events = [
      event(),
      event({ readings: {}, sequence: 9_007_199_254_740_991n, clientId: "☃".repeat(64) }),
      event({ eventTime: undefined, deviceId: "", sequence: 0n, clientId: "" }),
      event({ eventTime: timestampFromDate(new Date("1969-07-20T20:17:40.5Z")) }),
      event({ readings: Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`r${i}`, -i / 3])) }),
    ];
    for (const e of events) {
      const bytes = toBinary(StreamEventsRequestSchema, create(StreamEventsRequestSchema, { event: e }));
      expect(streamed(bytes)).toEqual(fromBinary(StreamEventsRequestSchema, bytes));
    }
    const empty = toBinary(StreamEventsRequestSchema, create(StreamEventsRequestSchema, {}));
    expect(streamed(empty)).toEqual(fromBinary(StreamEventsRequestSchema, empty));
    const all = toBinary(PublishEventsRequestSchema, create(PublishEventsRequestSchema, { events }));
    expect(batch(all)).toEqual(fromBinary(PublishEventsRequestSchema, all));
  });

  it("leave to fromBinary what is not the plain case", () => {
    const withUnknown = event();
    withUnknown.$unknown = [{ no: 99, wireType: 0, data: new Uint8Array([1]) }];
    const plain = toBinary(StreamEventsRequestSchema, create(StreamEventsRequestSchema, { event: event() }));
    // An own property "__proto__", which a plain assignment would take as the prototype.
    const odd = event({ readings: Object.fromEntries([["__proto__", 1]]) as Record<string, number> });
    const protoNamed = toBinary(PublishEventsRequestSchema, create(PublishEventsRequestSchema, { events: [odd] }));
    const cases: Array<[string, DescMessage, Uint8Array]> = [
      [
        "an unknown field, which the ingest must see",
        StreamEventsRequestSchema,
        toBinary(StreamEventsRequestSchema, create(StreamEventsRequestSchema, { event: withUnknown })),
      ],
      ["garbage", StreamEventsRequestSchema, Buffer.from("not a protobuf event")],
      ["cut short", StreamEventsRequestSchema, plain.subarray(0, plain.length - 3)],
      ["the event twice (merged)", StreamEventsRequestSchema, Buffer.concat([plain, plain])],
      ["a reading named __proto__", PublishEventsRequestSchema, protoNamed],
    ];
    for (const [what, schema, bytes] of cases) {
      const read = deviceDecodeShortcuts.get(schema)!;
      if (what.startsWith("a reading named")) expect(() => fromBinary(schema, bytes)).not.toThrow();
      expect({ what, read: read(bytes) }).toEqual({ what, read: undefined });
    }
  });
});
