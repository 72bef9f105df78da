/**
 * Bounds-checked cursor over one request body. Every read that would run past the end throws
 * MalformedRequestError, so a truncated or lying frame can never make a handler see garbage.
 */
export class MalformedRequestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MalformedRequestError";
  }
}

export class Reader {
  private pos: number;

  constructor(
    private readonly buf: Buffer,
    start = 0,
  ) {
    this.pos = start;
  }

  get offset(): number {
    return this.pos;
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number): number {
    if (n < 0 || this.pos + n > this.buf.length) {
      throw new MalformedRequestError(`need ${n} bytes at ${this.pos}, frame has ${this.buf.length}`);
    }
    const at = this.pos;
    this.pos += n;
    return at;
  }

  int8(): number {
    return this.buf.readInt8(this.need(1));
  }

  int16(): number {
    return this.buf.readInt16BE(this.need(2));
  }

  int32(): number {
    return this.buf.readInt32BE(this.need(4));
  }

  /** Offsets and timestamps stay far below 2^53 in practice; numbers keep the rest of the code simple. */
  int64(): number {
    return Number(this.buf.readBigInt64BE(this.need(8)));
  }

  bool(): boolean {
    return this.int8() !== 0;
  }

  uvarint(): number {
    let result = 0;
    let shift = 0;
    for (;;) {
      const byte = this.buf.readUInt8(this.need(1));
      result += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7;
      if (shift > 28) throw new MalformedRequestError("varint longer than 5 bytes");
    }
  }

  string(): string {
    const s = this.nullableString();
    if (s === null) throw new MalformedRequestError("null where a string is required");
    return s;
  }

  nullableString(): string | null {
    const len = this.int16();
    if (len < 0) return null;
    const at = this.need(len);
    return this.buf.toString("utf8", at, at + len);
  }

  compactString(): string {
    const s = this.compactNullableString();
    if (s === null) throw new MalformedRequestError("null where a compact string is required");
    return s;
  }

  compactNullableString(): string | null {
    const len = this.uvarint() - 1;
    if (len < 0) return null;
    const at = this.need(len);
    return this.buf.toString("utf8", at, at + len);
  }

  /** Returns a view into the frame, not a copy: callers that keep it must copy. */
  nullableBytes(): Buffer | null {
    const len = this.int32();
    if (len < 0) return null;
    const at = this.need(len);
    return this.buf.subarray(at, at + len);
  }

  bytes(): Buffer {
    const b = this.nullableBytes();
    if (b === null) throw new MalformedRequestError("null where bytes are required");
    return b;
  }

  /**
   * The element count is checked against the bytes left (every element takes at least one byte),
   * so a forged count of two billion fails at once instead of looping.
   */
  nullableArray<T>(item: (r: Reader) => T): T[] | null {
    const n = this.int32();
    if (n < 0) return null;
    return this.items(n, item);
  }

  array<T>(item: (r: Reader) => T): T[] {
    const a = this.nullableArray(item);
    if (a === null) throw new MalformedRequestError("null where an array is required");
    return a;
  }

  compactArray<T>(item: (r: Reader) => T): T[] {
    const n = this.uvarint() - 1;
    if (n < 0) throw new MalformedRequestError("null where a compact array is required");
    return this.items(n, item);
  }

  private items<T>(n: number, item: (r: Reader) => T): T[] {
    if (n > this.remaining) throw new MalformedRequestError(`array of ${n} cannot fit in ${this.remaining} bytes`);
    const out: T[] = new Array(n);
    for (let i = 0; i < n; i++) out[i] = item(this);
    return out;
  }

  /** Flexible versions carry tagged fields; none that we understand, so they are skipped. */
  skipTaggedFields(): void {
    const count = this.uvarint();
    if (count > this.remaining) throw new MalformedRequestError("tagged field count exceeds frame");
    for (let i = 0; i < count; i++) {
      this.uvarint();
      const size = this.uvarint();
      this.need(size);
    }
  }
}
