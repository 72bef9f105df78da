import { create, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { createValidator } from "@bufbuild/protovalidate";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import {
  DeviceEventSchema,
  GetDeviceStateRequestSchema,
  PublishEventsRequestSchema,
  StreamEventsRequestSchema,
  type DeviceEvent,
} from "../../gen/medmesh/devices/v1/devices_pb.js";
import { deviceValidationShortcuts, plainlyValidEvent } from "./event-rules.js";

const validator = createValidator();
const valid = (schema: DescMessage, m: unknown) =>
  validator.validate(schema, m as MessageShape<DescMessage>).kind === "valid";

const base = (): DeviceEvent =>
  create(DeviceEventSchema, {
    deviceId: "0b6c7c1e-3f7a-4a53-9d5e-2f1e8a9b7c10",
    sequence: 7n,
    clientId: "c-7",
    eventTime: timestampFromDate(new Date("2026-12-03T08:00:00Z")),
    readings: { pulse: 61, spo2: 97.5 },
  });

/** One rule broken (or brushed against) at a time, each beside the valid event. */
const variants: Array<[string, (e: DeviceEvent) => void]> = [
  ["as is", () => undefined],
  ["upper-case id", (e) => (e.deviceId = e.deviceId.toUpperCase())],
  ["id not a uuid", (e) => (e.deviceId = "not-a-uuid")],
  ["id with a space", (e) => (e.deviceId = ` ${e.deviceId}`)],
  ["id without dashes", (e) => (e.deviceId = e.deviceId.replaceAll("-", ""))],
  ["empty id", (e) => (e.deviceId = "")],
  ["sequence 0", (e) => (e.sequence = 0n)],
  ["sequence 1", (e) => (e.sequence = 1n)],
  ["largest sequence", (e) => (e.sequence = 9_007_199_254_740_991n)],
  ["sequence past 2^53-1", (e) => (e.sequence = 9_007_199_254_740_992n)],
  ["empty client id", (e) => (e.clientId = "")],
  ["client id of 64", (e) => (e.clientId = "x".repeat(64))],
  ["client id of 65", (e) => (e.clientId = "x".repeat(65))],
  ["no event time", (e) => (e.eventTime = undefined)],
  ["no readings", (e) => (e.readings = {})],
  ["64 readings", (e) => (e.readings = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`r${i}`, i])))],
  ["65 readings", (e) => (e.readings = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`r${i}`, i])))],
  ["reading name with a digit first", (e) => (e.readings = { "1a": 1 })],
  ["reading name of 64", (e) => (e.readings = { ["a".repeat(64)]: 1 })],
  ["reading name of 65", (e) => (e.readings = { ["a".repeat(65)]: 1 })],
  ["reading name with dots and dashes", (e) => (e.readings = { "temp.c-max_1": 1 })],
  ["reading name with a space", (e) => (e.readings = { "temp c": 1 })],
  ["empty reading name", (e) => (e.readings = { "": 1 })],
  ["NaN reading", (e) => (e.readings = { spo2: Number.NaN })],
  ["infinite reading", (e) => (e.readings = { spo2: Number.NEGATIVE_INFINITY })],
  ["negative zero reading", (e) => (e.readings = { spo2: -0 })],
];

describe("the hand checks of devices.proto's rules", () => {
  it("pass an event only when protovalidate finds it valid, and pass the ordinary valid ones", () => {
    for (const [what, change] of variants) {
      const e = base();
      change(e);
      const expected = valid(DeviceEventSchema, e);
      // Never more lenient than protovalidate; as lenient for everything a device normally sends.
      expect({ what, passed: plainlyValidEvent(e) }).toEqual({ what, passed: expected });
    }
  });

  it("leave to protovalidate what they cannot tell cheaply", () => {
    // 64 characters outside the BMP are 128 UTF-16 units: valid (max_len counts characters), but
    // the hand check counts units and says no, so protovalidate decides, and lets it through.
    const e = base();
    e.clientId = "😀".repeat(64);
    expect(plainlyValidEvent(e)).toBe(false);
    expect(valid(DeviceEventSchema, e)).toBe(true);
  });

  it("cover the streamed and batched requests and the state read", () => {
    const streamed = deviceValidationShortcuts.get(StreamEventsRequestSchema)! as (m: unknown) => boolean;
    const batch = deviceValidationShortcuts.get(PublishEventsRequestSchema)! as (m: unknown) => boolean;
    const read = deviceValidationShortcuts.get(GetDeviceStateRequestSchema)! as (m: unknown) => boolean;
    const bad = base();
    bad.sequence = 0n;
    const cases: Array<[DescMessage, (m: unknown) => boolean, unknown]> = [
      [StreamEventsRequestSchema, streamed, create(StreamEventsRequestSchema, { event: base() })],
      [StreamEventsRequestSchema, streamed, create(StreamEventsRequestSchema, {})],
      [StreamEventsRequestSchema, streamed, create(StreamEventsRequestSchema, { event: bad })],
      [PublishEventsRequestSchema, batch, create(PublishEventsRequestSchema, { events: [base(), base()] })],
      [PublishEventsRequestSchema, batch, create(PublishEventsRequestSchema, { events: [] })],
      [PublishEventsRequestSchema, batch, create(PublishEventsRequestSchema, { events: [base(), bad] })],
      [GetDeviceStateRequestSchema, read, create(GetDeviceStateRequestSchema, { deviceId: base().deviceId })],
      [GetDeviceStateRequestSchema, read, create(GetDeviceStateRequestSchema, { deviceId: "x" })],
    ];
    for (const [schema, check, message] of cases)
      expect({ schema: schema.typeName, passed: check(message) }).toEqual({
        schema: schema.typeName,
        passed: valid(schema, message),
      });
  });
});
