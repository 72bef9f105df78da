import net from "node:net";
import { crc32c } from "../../deploy/embedded/kafka/protocol/crc32c.js";
import { Reader } from "../../deploy/embedded/kafka/protocol/reader.js";
import { Writer } from "../../deploy/embedded/kafka/protocol/writer.js";

/**
 * A bare Kafka connection for tests that need exact bytes on the wire: hand-made frames, garbage,
 * truncation. Responses are matched by arrival order, as the protocol guarantees.
 */
export class RawClient {
  private buffered = Buffer.alloc(0);
  private frames: Buffer[] = [];
  private waiters: ((f: Buffer | null) => void)[] = [];
  private correlation = 1;
  readonly closed: Promise<void>;
  isClosed = false;

  private constructor(readonly socket: net.Socket) {
    socket.on("data", (d) => {
      this.buffered = Buffer.concat([this.buffered, d]);
      while (this.buffered.length >= 4) {
        const size = this.buffered.readInt32BE(0);
        if (this.buffered.length < 4 + size) break;
        const frame = this.buffered.subarray(4, 4 + size);
        this.buffered = this.buffered.subarray(4 + size);
        const w = this.waiters.shift();
        if (w) w(frame);
        else this.frames.push(frame);
      }
    });
    socket.on("error", () => {});
    this.closed = new Promise((resolve) =>
      socket.on("close", () => {
        this.isClosed = true;
        for (const w of this.waiters.splice(0)) w(null);
        resolve();
      }),
    );
  }

  static connect(address: string): Promise<RawClient> {
    const i = address.lastIndexOf(":");
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: address.slice(0, i), port: Number(address.slice(i + 1)) }, () =>
        resolve(new RawClient(s)),
      );
      s.once("error", reject);
    });
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Sends a request with header v1 (v2 when flexible) and returns its correlation id. */
  send(
    apiKey: number,
    version: number,
    body: Buffer | Writer,
    opts: { flexibleHeader?: boolean; correlationId?: number } = {},
  ): number {
    const correlationId = opts.correlationId ?? this.correlation++;
    const head = new Writer().int16(apiKey).int16(version).int32(correlationId).nullableString("raw-test");
    if (opts.flexibleHeader) head.emptyTaggedFields();
    const payload = Buffer.concat([head.toBuffer(), body instanceof Writer ? body.toBuffer() : body]);
    const size = Buffer.alloc(4);
    size.writeInt32BE(payload.length);
    this.write(Buffer.concat([size, payload]));
    return correlationId;
  }

  /** Next response frame (correlation id first), or null if the broker closed the connection. */
  next(): Promise<Buffer | null> {
    const f = this.frames.shift();
    if (f) return Promise.resolve(f);
    if (this.isClosed) return Promise.resolve(null);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Sends and reads the matching response; returns a reader positioned after the header. */
  async request(
    apiKey: number,
    version: number,
    body: Buffer | Writer,
    opts: { flexibleHeader?: boolean } = {},
  ): Promise<Reader> {
    const id = this.send(apiKey, version, body, opts);
    const frame = await this.next();
    if (!frame) throw new Error(`connection closed instead of answering api ${apiKey} v${version}`);
    const r = new Reader(frame);
    const got = r.int32();
    if (got !== id) throw new Error(`correlation id ${got}, expected ${id}`);
    return r;
  }

  close(): void {
    this.socket.destroy();
  }
}

export interface TestRecord {
  key?: string | null;
  value: string | null;
  timestampDelta?: number;
}

function zigzag(n: number): number {
  return n >= 0 ? n * 2 : -n * 2 - 1;
}

function varint(w: Writer, n: number): void {
  w.uvarint(zigzag(n));
}

/** Encodes an uncompressed RecordBatch v2, the way producers do. */
export function buildBatch(
  records: TestRecord[],
  opts: { baseTimestamp?: number; producerId?: number; producerEpoch?: number; baseSequence?: number } = {},
): Buffer {
  const body = new Writer();
  records.forEach((r, i) => {
    const rec = new Writer();
    rec.int8(0);
    varint(rec, r.timestampDelta ?? 0);
    varint(rec, i);
    const key = r.key == null ? null : Buffer.from(r.key);
    const value = r.value === null ? null : Buffer.from(r.value);
    varint(rec, key ? key.length : -1);
    if (key) rec.raw(key);
    varint(rec, value ? value.length : -1);
    if (value) rec.raw(value);
    varint(rec, 0);
    const bytes = rec.toBuffer();
    varint(body, bytes.length);
    body.raw(bytes);
  });
  const recordBytes = body.toBuffer();
  const baseTimestamp = opts.baseTimestamp ?? Date.now();
  const maxDelta = Math.max(0, ...records.map((r) => r.timestampDelta ?? 0));
  const afterCrc = new Writer()
    .int16(0)
    .int32(records.length - 1)
    .int64(baseTimestamp)
    .int64(baseTimestamp + maxDelta)
    .int64(opts.producerId ?? -1)
    .int16(opts.producerEpoch ?? -1)
    .int32(opts.baseSequence ?? -1)
    .int32(records.length)
    .raw(recordBytes)
    .toBuffer();
  const head = new Writer()
    .int64(0)
    .int32(afterCrc.length + 9) // leader epoch 4 + magic 1 + crc 4
    .int32(-1)
    .int8(2)
    .int32(crc32c(afterCrc) | 0)
    .toBuffer();
  return Buffer.concat([head, afterCrc]);
}

/** Produce v7 body for one partition. */
export function produceBody(topic: string, partition: number, records: Buffer | null, acks = -1): Writer {
  const w = new Writer().nullableString(null).int16(acks).int32(5000);
  w.array([topic], (w, t) => {
    w.string(t);
    w.array([partition], (w, p) => w.int32(p).nullableBytes(records));
  });
  return w;
}

/** Reads a Produce v7 response for one partition. */
export function readProduceResponse(r: Reader): { error: number; baseOffset: number } {
  r.int32(); // topics
  r.string();
  r.int32(); // partitions
  r.int32();
  const error = r.int16();
  const baseOffset = r.int64();
  return { error, baseOffset };
}

/** Fetch v11 body for one partition. */
export function fetchBody(
  topic: string,
  partition: number,
  offset: number,
  opts: { maxWaitMs?: number; minBytes?: number; maxBytes?: number } = {},
): Writer {
  const w = new Writer()
    .int32(-1)
    .int32(opts.maxWaitMs ?? 0)
    .int32(opts.minBytes ?? 1)
    .int32(opts.maxBytes ?? 1024 * 1024)
    .int8(0)
    .int32(0)
    .int32(-1);
  w.array([topic], (w, t) => {
    w.string(t);
    w.array([partition], (w, p) =>
      w
        .int32(p)
        .int32(-1)
        .int64(offset)
        .int64(-1)
        .int32(opts.maxBytes ?? 1024 * 1024),
    );
  });
  w.array([] as string[], () => {});
  w.string("");
  return w;
}

export interface FetchedPartition {
  error: number;
  highWatermark: number;
  lastStableOffset: number;
  logStartOffset: number;
  preferredReadReplica: number;
  records: Buffer;
}

export function readFetchResponse(r: Reader): FetchedPartition {
  r.int32(); // throttle
  r.int16(); // error
  r.int32(); // session
  r.int32(); // topics
  r.string();
  r.int32(); // partitions
  r.int32();
  const error = r.int16();
  const highWatermark = r.int64();
  const lastStableOffset = r.int64();
  const logStartOffset = r.int64();
  r.array((r) => [r.int64(), r.int64()]);
  const preferredReadReplica = r.int32();
  const records = r.nullableBytes() ?? Buffer.alloc(0);
  return {
    error,
    highWatermark,
    lastStableOffset,
    logStartOffset,
    preferredReadReplica,
    records: Buffer.from(records),
  };
}

/** Base offsets of the batches in a records blob. */
export function batchOffsets(records: Buffer): { baseOffset: number; lastOffset: number }[] {
  const out: { baseOffset: number; lastOffset: number }[] = [];
  let at = 0;
  while (at + 61 <= records.length) {
    const size = records.readInt32BE(at + 8) + 12;
    if (at + size > records.length) break;
    const base = Number(records.readBigInt64BE(at));
    out.push({ baseOffset: base, lastOffset: base + records.readInt32BE(at + 23) });
    at += size;
  }
  return out;
}

/** CreateTopics v3 body. */
export function createTopicsBody(name: string, partitions: number, replicationFactor = 1): Writer {
  const w = new Writer();
  w.array([name], (w, n) => {
    w.string(n).int32(partitions).int16(replicationFactor);
    w.array([] as number[], () => {});
    w.array([] as number[], () => {});
  });
  return w.int32(5000).bool(false);
}

export function readCreateTopicsResponse(r: Reader): { name: string; error: number; message: string | null }[] {
  r.int32();
  return r.array((r) => ({ name: r.string(), error: r.int16(), message: r.nullableString() }));
}
