import { crc32c } from "./crc32c.js";

/** Byte positions inside a RecordBatch v2 header (magic 2), per the Kafka protocol guide. */
export const BATCH = {
  BASE_OFFSET: 0,
  LENGTH: 8,
  LEADER_EPOCH: 12,
  MAGIC: 16,
  CRC: 17,
  ATTRIBUTES: 21,
  LAST_OFFSET_DELTA: 23,
  BASE_TIMESTAMP: 27,
  MAX_TIMESTAMP: 35,
  PRODUCER_ID: 43,
  PRODUCER_EPOCH: 51,
  BASE_SEQUENCE: 53,
  RECORDS_COUNT: 57,
  HEADER_SIZE: 61,
  /** baseOffset + length: the part not counted by the length field. */
  LOG_OVERHEAD: 12,
} as const;

export interface BatchHeader {
  /** Total size of the batch in bytes, including baseOffset and length. */
  size: number;
  baseOffset: number;
  lastOffsetDelta: number;
  attributes: number;
  maxTimestamp: number;
  producerId: number;
  producerEpoch: number;
  baseSequence: number;
  recordsCount: number;
}

export type BatchProblem = "truncated" | "bad-magic" | "bad-crc" | "bad-length" | "bad-header";

export function isTransactional(attributes: number): boolean {
  return (attributes & 0x10) !== 0;
}

export function isControl(attributes: number): boolean {
  return (attributes & 0x20) !== 0;
}

/**
 * Reads and checks the batch starting at `at`. `verifyCrc` is off when replaying our own files only
 * if the caller already trusts them; produce and recovery both verify.
 */
export function readBatchHeader(buf: Buffer, at: number, verifyCrc: boolean): BatchHeader | BatchProblem {
  if (buf.length - at < BATCH.HEADER_SIZE) return "truncated";
  const length = buf.readInt32BE(at + BATCH.LENGTH);
  const size = length + BATCH.LOG_OVERHEAD;
  if (length < BATCH.HEADER_SIZE - BATCH.LOG_OVERHEAD) return "bad-length";
  if (buf.length - at < size) return "truncated";
  if (buf.readInt8(at + BATCH.MAGIC) !== 2) return "bad-magic";
  if (verifyCrc) {
    const stored = buf.readUInt32BE(at + BATCH.CRC);
    if (crc32c(buf, at + BATCH.ATTRIBUTES, at + size) !== stored) return "bad-crc";
  }
  const lastOffsetDelta = buf.readInt32BE(at + BATCH.LAST_OFFSET_DELTA);
  const recordsCount = buf.readInt32BE(at + BATCH.RECORDS_COUNT);
  if (lastOffsetDelta < 0 || recordsCount < 0) return "bad-header";
  return {
    size,
    baseOffset: Number(buf.readBigInt64BE(at + BATCH.BASE_OFFSET)),
    lastOffsetDelta,
    attributes: buf.readInt16BE(at + BATCH.ATTRIBUTES),
    maxTimestamp: Number(buf.readBigInt64BE(at + BATCH.MAX_TIMESTAMP)),
    producerId: Number(buf.readBigInt64BE(at + BATCH.PRODUCER_ID)),
    producerEpoch: buf.readInt16BE(at + BATCH.PRODUCER_EPOCH),
    baseSequence: buf.readInt32BE(at + BATCH.BASE_SEQUENCE),
    recordsCount,
  };
}

/** Only the baseOffset and leader epoch change; both lie before the CRC-covered range. */
export function assignBaseOffset(batch: Buffer, baseOffset: number): void {
  batch.writeBigInt64BE(BigInt(baseOffset), BATCH.BASE_OFFSET);
  batch.writeInt32BE(0, BATCH.LEADER_EPOCH);
}

function readVarint(buf: Buffer, at: number): [value: number, next: number] {
  let raw = 0;
  let shift = 0;
  let i = at;
  for (;;) {
    if (i >= buf.length) throw new RangeError("varint past end");
    const byte = buf[i++]!;
    raw += (byte & 0x7f) * 2 ** shift;
    if ((byte & 0x80) === 0) break;
    shift += 7;
    if (shift > 63) throw new RangeError("varint too long");
  }
  // zig-zag decode without 32-bit overflow
  const value = raw % 2 === 0 ? raw / 2 : -(raw + 1) / 2;
  return [value, i];
}

/**
 * Timestamps of the records in an uncompressed batch, used by ListOffsets to find the first offset at
 * or after a time. Returns null for compressed batches (the caller then answers at batch granularity).
 */
export function recordTimestamps(
  batch: Buffer,
  header: BatchHeader,
): { offsetDelta: number; timestamp: number }[] | null {
  if ((header.attributes & 0x07) !== 0) return null;
  const baseTimestamp = Number(batch.readBigInt64BE(BATCH.BASE_TIMESTAMP));
  const out: { offsetDelta: number; timestamp: number }[] = [];
  let at = BATCH.HEADER_SIZE;
  try {
    for (let i = 0; i < header.recordsCount; i++) {
      const [length, afterLength] = readVarint(batch, at);
      let p = afterLength + 1; // attributes byte
      const [tsDelta, afterTs] = readVarint(batch, p);
      p = afterTs;
      const [offsetDelta] = readVarint(batch, p);
      out.push({ offsetDelta, timestamp: baseTimestamp + tsDelta });
      at = afterLength + length;
    }
  } catch {
    return null;
  }
  return out;
}
