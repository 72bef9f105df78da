import type { DescMessage } from "@bufbuild/protobuf";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { TimestampSchema, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  DeviceEventSchema,
  PublishEventsRequestSchema,
  StreamEventsRequestSchema,
  type DeviceEvent,
  type PublishEventsRequest,
  type StreamEventsRequest,
} from "../../gen/medmesh/devices/v1/devices_pb.js";
import type { DecodeShortcut } from "../../platform/grpc/adapter.js";

/*
 * The requests that carry device events, read by hand: the reflective fromBinary was about 6% of
 * the ingest's CPU per streamed event. These read only the plain case, the fields of the
 * contract each at most once with their own wire types; anything else (a field this server does
 * not know, which must be kept as unknown so the ingest can refuse it, a repeated field, bytes that
 * are not the message) makes them give up, and fromBinary reads the message or says what is
 * wrong with it. request-decoding.test.ts holds them to fromBinary's messages.
 */

/** Thrown inside to give up; never leaves this module. */
const notPlain = new Error("not a plain message");

function check(condition: boolean): void {
  if (!condition) throw notPlain;
}

function readTimestamp(r: BinaryReader): Timestamp {
  const t: Timestamp = { $typeName: TimestampSchema.typeName, seconds: 0n, nanos: 0 };
  const end = r.uint32() + r.pos;
  let seen = 0;
  while (r.pos < end) {
    const [field, wire] = r.tag();
    check(wire === WireType.Varint && (field === 1 || field === 2) && (seen & field) === 0);
    seen |= field;
    if (field === 1) t.seconds = BigInt(r.int64());
    else t.nanos = r.int32();
  }
  check(r.pos === end);
  return t;
}

function readEvent(r: BinaryReader): DeviceEvent {
  const e: DeviceEvent = {
    $typeName: DeviceEventSchema.typeName,
    deviceId: "",
    sequence: 0n,
    clientId: "",
    readings: {},
  };
  const end = r.uint32() + r.pos;
  let seen = 0;
  while (r.pos < end) {
    const [field, wire] = r.tag();
    // Each singular field once; map entries (5) as often as they come, each name once.
    check(field >= 1 && field <= 5 && (field === 5 || (seen & (1 << field)) === 0));
    seen |= 1 << field;
    switch (field) {
      case 1:
        check(wire === WireType.LengthDelimited);
        e.deviceId = r.string(true);
        break;
      case 2:
        check(wire === WireType.Varint);
        e.sequence = BigInt(r.uint64());
        break;
      case 3:
        check(wire === WireType.LengthDelimited);
        e.clientId = r.string(true);
        break;
      case 4:
        check(wire === WireType.LengthDelimited);
        e.eventTime = readTimestamp(r);
        break;
      default: {
        check(wire === WireType.LengthDelimited);
        const entryEnd = r.uint32() + r.pos;
        const [keyField, keyWire] = r.tag();
        check(keyField === 1 && keyWire === WireType.LengthDelimited);
        const name = r.string(true);
        const [valueField, valueWire] = r.tag();
        check(valueField === 2 && valueWire === WireType.Bit64);
        // A name sent twice (fromBinary keeps the last) or one objects inherit ("__proto__",
        // "constructor"): left to fromBinary.
        check(!(name in e.readings));
        e.readings[name] = r.double();
        check(r.pos === entryEnd);
      }
    }
  }
  check(r.pos === end);
  return e;
}

function streamEventsRequest(bytes: Uint8Array): StreamEventsRequest {
  const r = new BinaryReader(bytes);
  const m: StreamEventsRequest = { $typeName: StreamEventsRequestSchema.typeName };
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    check(field === 1 && wire === WireType.LengthDelimited && m.event === undefined);
    m.event = readEvent(r);
  }
  check(r.pos === r.len);
  return m;
}

function publishEventsRequest(bytes: Uint8Array): PublishEventsRequest {
  const r = new BinaryReader(bytes);
  const m: PublishEventsRequest = { $typeName: PublishEventsRequestSchema.typeName, events: [] };
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    check(field === 1 && wire === WireType.LengthDelimited);
    m.events.push(readEvent(r));
  }
  check(r.pos === r.len);
  return m;
}

/** Undefined when the bytes are not plainly the message: fromBinary then decides. */
function giveUpQuietly<T>(read: (bytes: Uint8Array) => T): DecodeShortcut {
  return (bytes) => {
    try {
      return read(bytes);
    } catch {
      return undefined;
    }
  };
}

/** For startGrpcServer({ decodeShortcuts }): the requests of DeviceService that carry events. */
export const deviceDecodeShortcuts: ReadonlyMap<DescMessage, DecodeShortcut> = new Map<DescMessage, DecodeShortcut>([
  [StreamEventsRequestSchema, giveUpQuietly(streamEventsRequest)],
  [PublishEventsRequestSchema, giveUpQuietly(publishEventsRequest)],
]);
