import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import type { DeviceEvent } from "../../gen/medmesh/devices/v1/devices_pb.js";

/*
 * `DeviceEventRecorded` (the value of every `device.events` record) written and read by hand.
 * The message is small and fixed, and both ends run once per event: the reflective encoder was a
 * tenth of the ingest's CPU, the reflective decoder about a twentieth of the worker's.
 * record-encoding.test.ts holds both to toBinary/fromBinary and fails when the message gains a
 * field.
 */

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * The encoded event received at `receivedAtMs`: the bytes `toBinary` writes. Written straight
 * into one buffer (from Node's pool: no allocation of its own for an event this size); anything
 * unusual (times before 1970, sequences past 2^53) goes through protobuf-es' writer instead.
 */
export function encodeRecorded(e: DeviceEvent, receivedAtMs: number): Uint8Array {
  const t = e.eventTime;
  if (e.sequence > MAX_SAFE || (t !== undefined && (t.seconds < 0n || t.seconds > MAX_SAFE || t.nanos < 0)))
    return encodeWithWriter(e, receivedAtMs);
  const sequence = Number(e.sequence);
  const idBytes = Buffer.byteLength(e.deviceId);
  const clientBytes = Buffer.byteLength(e.clientId);
  const receivedSeconds = Math.floor(receivedAtMs / 1000);
  const receivedNanos = (receivedAtMs - receivedSeconds * 1000) * 1_000_000;
  // proto3: fields at their zero value are left out, as toBinary does.
  let size = 0;
  if (idBytes > 0) size += 1 + varintSize(idBytes) + idBytes;
  if (sequence !== 0) size += 1 + varintSize(sequence);
  if (clientBytes > 0) size += 1 + varintSize(clientBytes) + clientBytes;
  const eventTimeBytes = t === undefined ? -1 : timestampSize(Number(t.seconds), t.nanos);
  if (eventTimeBytes >= 0) size += 1 + varintSize(eventTimeBytes) + eventTimeBytes;
  const readings = e.readings;
  for (const name in readings) {
    const nameBytes = Buffer.byteLength(name);
    const entry = 1 + varintSize(nameBytes) + nameBytes + 9;
    size += 1 + varintSize(entry) + entry;
  }
  const receivedBytes = timestampSize(receivedSeconds, receivedNanos);
  size += 1 + varintSize(receivedBytes) + receivedBytes;

  const out = Buffer.allocUnsafe(size);
  let at = 0;
  if (idBytes > 0) {
    out[at++] = 0x0a; // 1, length-delimited
    at = writeVarint(out, at, idBytes);
    at += out.write(e.deviceId, at, idBytes, "utf8");
  }
  if (sequence !== 0) {
    out[at++] = 0x10; // 2, varint
    at = writeVarint(out, at, sequence);
  }
  if (clientBytes > 0) {
    out[at++] = 0x1a; // 3, length-delimited
    at = writeVarint(out, at, clientBytes);
    at += out.write(e.clientId, at, clientBytes, "utf8");
  }
  if (t !== undefined) {
    out[at++] = 0x22; // 4, length-delimited
    at = writeVarint(out, at, eventTimeBytes);
    at = writeTimestampBody(out, at, Number(t.seconds), t.nanos);
  }
  for (const name in readings) {
    const nameBytes = Buffer.byteLength(name);
    const entry = 1 + varintSize(nameBytes) + nameBytes + 9;
    out[at++] = 0x2a; // 5, length-delimited (a map entry)
    at = writeVarint(out, at, entry);
    out[at++] = 0x0a; // key
    at = writeVarint(out, at, nameBytes);
    at += out.write(name, at, nameBytes, "utf8");
    out[at++] = 0x11; // value, 64-bit
    at = out.writeDoubleLE(readings[name]!, at);
  }
  out[at++] = 0x32; // 6, length-delimited
  at = writeVarint(out, at, receivedBytes);
  writeTimestampBody(out, at, receivedSeconds, receivedNanos);
  return out;
}

/** The size of a Timestamp's fields (both non-negative here); zero values are left out. */
function timestampSize(seconds: number, nanos: number): number {
  return (seconds !== 0 ? 1 + varintSize(seconds) : 0) + (nanos !== 0 ? 1 + varintSize(nanos) : 0);
}

function writeTimestampBody(out: Buffer, at: number, seconds: number, nanos: number): number {
  if (seconds !== 0) {
    out[at++] = 0x08;
    at = writeVarint(out, at, seconds);
  }
  if (nanos !== 0) {
    out[at++] = 0x10;
    at = writeVarint(out, at, nanos);
  }
  return at;
}

/** Bytes of a varint of a non-negative safe integer. */
export function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    size++;
  }
  return size;
}

/** Writes a non-negative safe integer as a varint (division, not bit operators: they stop at 32 bits). */
export function writeVarint(out: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    out[at++] = (n % 0x80) | 0x80;
    n = Math.floor(n / 0x80);
  }
  out[at++] = n;
  return at;
}

/** The general path, for values the fast one does not take (negative times, huge sequences). */
function encodeWithWriter(e: DeviceEvent, receivedAtMs: number): Uint8Array {
  const w = new BinaryWriter();
  if (e.deviceId !== "") w.tag(1, WireType.LengthDelimited).string(e.deviceId);
  if (e.sequence !== 0n) w.tag(2, WireType.Varint).uint64(e.sequence);
  if (e.clientId !== "") w.tag(3, WireType.LengthDelimited).string(e.clientId);
  if (e.eventTime) writeTimestamp(w, 4, e.eventTime.seconds, e.eventTime.nanos);
  for (const key in e.readings)
    w.tag(5, WireType.LengthDelimited)
      .fork()
      .tag(1, WireType.LengthDelimited)
      .string(key)
      .tag(2, WireType.Bit64)
      .double(e.readings[key]!)
      .join();
  const seconds = Math.floor(receivedAtMs / 1000);
  writeTimestamp(w, 6, BigInt(seconds), (receivedAtMs - seconds * 1000) * 1_000_000);
  return w.finish();
}

function writeTimestamp(w: BinaryWriter, field: number, seconds: bigint, nanos: number) {
  w.tag(field, WireType.LengthDelimited).fork();
  if (seconds !== 0n) w.tag(1, WireType.Varint).int64(seconds);
  if (nanos !== 0) w.tag(2, WireType.Varint).int32(nanos);
  w.join();
}

/** What the worker needs of a record: everything but the time it was received. */
export interface RecordedEvent {
  deviceId: string;
  sequence: bigint;
  clientId: string;
  /** Absent when the record has none. */
  eventTime: { seconds: bigint; nanos: number } | undefined;
  readings: Record<string, number>;
}

/**
 * Reads a `DeviceEventRecorded` as fromBinary does (the last occurrence of a field wins, map
 * entries without a key or value take the zero value, strings must be UTF-8, unknown fields are
 * skipped), keeping only what the worker applies. Throws on bytes that are not such a message.
 */
export function decodeRecorded(bytes: Uint8Array): RecordedEvent {
  const r = new BinaryReader(bytes);
  const out: RecordedEvent = {
    deviceId: "",
    sequence: 0n,
    clientId: "",
    eventTime: undefined,
    // No prototype: a name such as "__proto__" in a hostile record is just a name.
    readings: Object.create(null) as Record<string, number>,
  };
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    switch (field) {
      case 1:
        expectWire(field, wire, WireType.LengthDelimited);
        out.deviceId = r.string(true);
        break;
      case 2:
        expectWire(field, wire, WireType.Varint);
        out.sequence = BigInt(r.uint64());
        break;
      case 3:
        expectWire(field, wire, WireType.LengthDelimited);
        out.clientId = r.string(true);
        break;
      case 4:
        expectWire(field, wire, WireType.LengthDelimited);
        out.eventTime = readTimestamp(r, out.eventTime);
        break;
      case 5: {
        expectWire(field, wire, WireType.LengthDelimited);
        const end = r.uint32() + r.pos;
        let name = "";
        let value = 0;
        while (r.pos < end) {
          const [f, w] = r.tag();
          if (f === 1) {
            expectWire(f, w, WireType.LengthDelimited);
            name = r.string(true);
          } else if (f === 2) {
            expectWire(f, w, WireType.Bit64);
            value = r.double();
          } else r.skip(w, f);
        }
        if (r.pos !== end) throw new Error("premature end of a map entry");
        out.readings[name] = value;
        break;
      }
      default:
        // 6 (receive_time) and fields a newer producer added: not needed to apply the event.
        r.skip(wire, field);
    }
  }
  if (r.pos !== r.len) throw new Error("premature end of the message");
  return out;
}

function readTimestamp(
  r: BinaryReader,
  into: { seconds: bigint; nanos: number } | undefined,
): { seconds: bigint; nanos: number } {
  // A repeated message field merges into the earlier one, as fromBinary does.
  const t = into ?? { seconds: 0n, nanos: 0 };
  const end = r.uint32() + r.pos;
  while (r.pos < end) {
    const [f, w] = r.tag();
    if (f === 1) {
      expectWire(f, w, WireType.Varint);
      t.seconds = BigInt(r.int64());
    } else if (f === 2) {
      expectWire(f, w, WireType.Varint);
      t.nanos = r.int32();
    } else r.skip(w, f);
  }
  if (r.pos !== end) throw new Error("premature end of a Timestamp");
  return t;
}

function expectWire(field: number, got: WireType, want: WireType) {
  if (got !== want) throw new Error(`field ${field} has wire type ${got}, expected ${want}`);
}
