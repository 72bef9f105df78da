import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { DeviceEventSchema } from "../../gen/medmesh/devices/v1/devices_pb.js";
import { DeviceEventRecordedSchema } from "../../gen/medmesh/events/v1/device_events_pb.js";
import { encodeRecorded } from "./ingest.js";

const device = "0b6c7c1e-3f7a-4a53-9d5e-2f1e8a9b7c10";

const samples = [
  create(DeviceEventSchema, {
    deviceId: device,
    sequence: 1n,
    clientId: "a",
    eventTime: timestampFromDate(new Date("2026-12-03T08:00:00.123Z")),
    readings: { pulse: 61, spo2: 97.5 },
  }),
  // Whole seconds (no nanos), no readings, a large sequence and a negative reading.
  create(DeviceEventSchema, {
    deviceId: device,
    sequence: 9007199254740991n,
    clientId: "x".repeat(64),
    eventTime: timestampFromDate(new Date("2026-01-01T00:00:00Z")),
  }),
  create(DeviceEventSchema, {
    deviceId: device,
    sequence: 42n,
    clientId: "é-ü-☃",
    eventTime: timestampFromDate(new Date("1970-01-01T00:00:00.001Z")),
    readings: { "temp.c": -0.25, a: 0, b_1: 1e300 },
  }),
];

describe("encodeRecorded", () => {
  it("writes the bytes toBinary writes for the same DeviceEventRecorded", () => {
    for (const receivedAt of [Date.parse("2026-12-03T08:00:01.456Z"), Date.parse("2026-12-03T08:00:02Z")]) {
      for (const e of samples) {
        const expected = toBinary(
          DeviceEventRecordedSchema,
          create(DeviceEventRecordedSchema, {
            deviceId: e.deviceId,
            sequence: e.sequence,
            clientId: e.clientId,
            eventTime: e.eventTime,
            readings: e.readings,
            receiveTime: timestampFromDate(new Date(receivedAt)),
          }),
        );
        const got = encodeRecorded(e, receivedAt);
        expect(Buffer.from(got).toString("hex")).toBe(Buffer.from(expected).toString("hex"));
        const back = fromBinary(DeviceEventRecordedSchema, got);
        expect(back.readings).toEqual(e.readings);
        expect(back.sequence).toBe(e.sequence);
      }
    }
  });

  it("knows every field of the message (a new field must be added to the hand encoder)", () => {
    expect(DeviceEventRecordedSchema.fields.map((f) => `${f.number}:${f.name}`)).toEqual([
      "1:device_id",
      "2:sequence",
      "3:client_id",
      "4:event_time",
      "5:readings",
      "6:receive_time",
    ]);
  });
});
