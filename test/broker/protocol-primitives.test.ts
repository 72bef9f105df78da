import { describe, expect, it } from "vitest";
import { crc32c } from "../../deploy/embedded/kafka/protocol/crc32c.js";
import { MalformedRequestError, Reader } from "../../deploy/embedded/kafka/protocol/reader.js";
import { readBatchHeader } from "../../deploy/embedded/kafka/protocol/record-batch.js";
import { Writer } from "../../deploy/embedded/kafka/protocol/writer.js";
import { buildBatch } from "./helpers.js";

describe("crc32c", () => {
  it("matches the Castagnoli check value and known vectors", () => {
    expect(crc32c(Buffer.from("123456789"))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(0))).toBe(0);
    expect(crc32c(Buffer.alloc(32, 0))).toBe(0x8a9136aa);
    expect(crc32c(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43);
  });

  it("gives the same answer on any slice alignment", () => {
    const data = Buffer.from(Array.from({ length: 1000 }, (_, i) => (i * 31) & 0xff));
    const padded = Buffer.concat([Buffer.alloc(3), data]);
    expect(crc32c(padded, 3)).toBe(crc32c(data));
  });
});

describe("reader", () => {
  it("throws MalformedRequestError instead of reading past the end", () => {
    expect(() => new Reader(Buffer.from([0, 5, 65])).string()).toThrow(MalformedRequestError);
    expect(() => new Reader(Buffer.from([0, 0, 0])).int32()).toThrow(MalformedRequestError);
    expect(() => new Reader(Buffer.from([0x7f, 0xff, 0xff, 0xff, 1])).array((r) => r.int8())).toThrow(
      MalformedRequestError,
    );
    expect(() => new Reader(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0x01])).uvarint()).toThrow(
      MalformedRequestError,
    );
  });

  it("reads what the writer wrote, including compact and nullable forms", () => {
    const big = Buffer.alloc(5000, 7);
    const w = new Writer(8)
      .int8(-3)
      .int16(-300)
      .int32(123456789)
      .int64(2 ** 40 + 5)
      .string("héllo")
      .nullableString(null)
      .compactString("cs")
      .uvarint(300)
      .bytes(big)
      .nullableBytes(null)
      .array([1, 2, 3], (w, v) => w.int32(v));
    const r = new Reader(w.toBuffer());
    expect([r.int8(), r.int16(), r.int32(), r.int64()]).toEqual([-3, -300, 123456789, 2 ** 40 + 5]);
    expect([r.string(), r.nullableString(), r.compactString(), r.uvarint()]).toEqual(["héllo", null, "cs", 300]);
    expect(r.bytes().equals(big)).toBe(true);
    expect(r.nullableBytes()).toBeNull();
    expect(r.array((r) => r.int32())).toEqual([1, 2, 3]);
    expect(r.remaining).toBe(0);
  });
});

describe("record batch header", () => {
  it("parses a producer batch and detects corruption and truncation", () => {
    const batch = buildBatch([{ value: "a" }, { value: "b" }], { producerId: 7, producerEpoch: 1, baseSequence: 10 });
    const h = readBatchHeader(batch, 0, true);
    expect(h).toMatchObject({
      size: batch.length,
      lastOffsetDelta: 1,
      producerId: 7,
      producerEpoch: 1,
      baseSequence: 10,
      recordsCount: 2,
    });
    expect(readBatchHeader(batch.subarray(0, batch.length - 1), 0, true)).toBe("truncated");
    const bad = Buffer.from(batch);
    bad.writeUInt8(bad.readUInt8(bad.length - 1) ^ 1, bad.length - 1);
    expect(readBatchHeader(bad, 0, true)).toBe("bad-crc");
    const v1 = Buffer.from(batch);
    v1[16] = 1;
    expect(readBatchHeader(v1, 0, true)).toBe("bad-magic");
  });
});
