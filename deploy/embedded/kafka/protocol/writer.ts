/**
 * Builds a response as a list of chunks so large record sets are sent by reference instead of being
 * copied into one big buffer. Small fields go into a scratch buffer that grows as needed.
 */
export class Writer {
  private chunks: Buffer[] = [];
  private scratch: Buffer;
  private used = 0;
  private flushedLength = 0;

  constructor(initial = 256) {
    this.scratch = Buffer.allocUnsafe(initial);
  }

  get length(): number {
    return this.flushedLength + this.used;
  }

  /** Reserves n bytes and returns where they start. Call it before touching this.scratch: it may swap the buffer. */
  private room(n: number): number {
    if (this.used + n > this.scratch.length) {
      this.flushScratch();
      if (n > this.scratch.length) this.scratch = Buffer.allocUnsafe(Math.max(n, this.scratch.length * 2));
    }
    const at = this.used;
    this.used += n;
    return at;
  }

  private flushScratch(): void {
    if (this.used === 0) return;
    this.chunks.push(this.scratch.subarray(0, this.used));
    this.flushedLength += this.used;
    this.scratch = Buffer.allocUnsafe(Math.max(256, this.scratch.length));
    this.used = 0;
  }

  int8(v: number): this {
    const at = this.room(1);
    this.scratch.writeInt8(v, at);
    return this;
  }

  int16(v: number): this {
    const at = this.room(2);
    this.scratch.writeInt16BE(v, at);
    return this;
  }

  int32(v: number): this {
    const at = this.room(4);
    this.scratch.writeInt32BE(v, at);
    return this;
  }

  int64(v: number | bigint): this {
    const at = this.room(8);
    this.scratch.writeBigInt64BE(BigInt(v), at);
    return this;
  }

  bool(v: boolean): this {
    return this.int8(v ? 1 : 0);
  }

  uvarint(v: number): this {
    let n = v;
    while (n >= 0x80) {
      const at = this.room(1);
      this.scratch.writeUInt8((n & 0x7f) | 0x80, at);
      n = Math.floor(n / 128);
    }
    const last = this.room(1);
    this.scratch.writeUInt8(n, last);
    return this;
  }

  string(v: string): this {
    const len = Buffer.byteLength(v);
    this.int16(len);
    const at = this.room(len);
    this.scratch.write(v, at, "utf8");
    return this;
  }

  nullableString(v: string | null): this {
    return v === null ? this.int16(-1) : this.string(v);
  }

  compactString(v: string): this {
    const len = Buffer.byteLength(v);
    this.uvarint(len + 1);
    const at = this.room(len);
    this.scratch.write(v, at, "utf8");
    return this;
  }

  /** Large payloads are appended by reference; the caller must not mutate them afterwards. */
  raw(b: Buffer): this {
    if (b.length <= 512) {
      const at = this.room(b.length);
      b.copy(this.scratch, at);
    } else {
      this.flushScratch();
      this.chunks.push(b);
      this.flushedLength += b.length;
    }
    return this;
  }

  bytes(b: Buffer): this {
    this.int32(b.length);
    return this.raw(b);
  }

  nullableBytes(b: Buffer | null): this {
    return b === null ? this.int32(-1) : this.bytes(b);
  }

  /** Records fields made of several stored batches: length prefix, then every batch by reference. */
  bytesList(parts: Buffer[]): this {
    let total = 0;
    for (const p of parts) total += p.length;
    this.int32(total);
    for (const p of parts) this.raw(p);
    return this;
  }

  array<T>(items: readonly T[], item: (w: Writer, v: T) => void): this {
    this.int32(items.length);
    for (const v of items) item(this, v);
    return this;
  }

  nullableArray<T>(items: readonly T[] | null, item: (w: Writer, v: T) => void): this {
    if (items === null) return this.int32(-1);
    return this.array(items, item);
  }

  compactArray<T>(items: readonly T[], item: (w: Writer, v: T) => void): this {
    this.uvarint(items.length + 1);
    for (const v of items) item(this, v);
    return this;
  }

  emptyTaggedFields(): this {
    return this.uvarint(0);
  }

  toChunks(): Buffer[] {
    this.flushScratch();
    return this.chunks;
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.toChunks());
  }
}
