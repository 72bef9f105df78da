import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { DeviceEventSchema } from "../../gen/medmesh/devices/v1/devices_pb.js";
import { DeviceEventRecordedSchema } from "../../gen/medmesh/events/v1/device_events_pb.js";
import { decodeRecorded, encodeRecorded } from "./record-codec.js";

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
  // Lengths over 127 bytes (two-byte varints), every reading name at its longest.
  create(DeviceEventSchema, {
    deviceId: device,
    sequence: 300n,
    clientId: "☃".repeat(64),
    eventTime: timestampFromDate(new Date("2026-12-03T08:00:00.999Z")),
    readings: Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`r${i}`.padEnd(64, "x"), i * 1.5])),
  }),
  // Taken by the general path: a time before 1970, a sequence past 2^53, nothing but the time.
  create(DeviceEventSchema, {
    deviceId: device,
    sequence: 2n ** 63n,
    clientId: "old",
    eventTime: timestampFromDate(new Date("1969-07-20T20:17:40.5Z")),
    readings: { x: 1 },
  }),
  create(DeviceEventSchema, { eventTime: timestampFromDate(new Date("2026-12-03T08:00:00Z")) }),
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

  it("reads back what fromBinary reads, and refuses what is not the message", () => {
    for (const e of samples) {
      const bytes = encodeRecorded(e, Date.parse("2026-12-03T08:00:01.456Z"));
      const expected = fromBinary(DeviceEventRecordedSchema, bytes);
      const got = decodeRecorded(bytes);
      expect({ ...got, readings: { ...got.readings } }).toEqual({
        deviceId: expected.deviceId,
        sequence: expected.sequence,
        clientId: expected.clientId,
        eventTime: { seconds: expected.eventTime!.seconds, nanos: expected.eventTime!.nanos },
        readings: expected.readings,
      });
    }
    // Fields a newer producer added are passed over.
    const newer = Buffer.concat([encodeRecorded(samples[0]!, 0), Buffer.from([0xb8, 0x06, 0x01])]);
    expect(decodeRecorded(newer).sequence).toBe(1n);
    for (const bad of [
      Buffer.from("not a protobuf event"),
      Buffer.from([0x0a, 0x05, 0x61]), // a string longer than the message
      Buffer.from([0x10]), // a varint cut short
      Buffer.from([0x0a, 0x02, 0xc3, 0x28]), // not UTF-8
      Buffer.from([0x08, 0x01]), // device_id as a varint
    ]) {
      expect(() => fromBinary(DeviceEventRecordedSchema, bad), bad.toString("hex")).toThrow();
      expect(() => decodeRecorded(bad), bad.toString("hex")).toThrow();
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
