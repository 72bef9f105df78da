import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startBroker, type RunningBroker } from "../../deploy/embedded/kafka/index.js";
import { Writer } from "../../deploy/embedded/kafka/protocol/writer.js";
import {
  RawClient,
  batchOffsets,
  buildBatch,
  createTopicsBody,
  fetchBody,
  produceBody,
  readCreateTopicsResponse,
  readFetchResponse,
  readProduceResponse,
} from "./helpers.js";

const API = {
  Produce: 0,
  Fetch: 1,
  ListOffsets: 2,
  Metadata: 3,
  ApiVersions: 18,
  CreateTopics: 19,
  InitProducerId: 22,
};

let broker: RunningBroker;
const clients: RawClient[] = [];

async function connect(): Promise<RawClient> {
  const c = await RawClient.connect(broker.address);
  clients.push(c);
  return c;
}

async function createTopic(name: string, partitions = 1): Promise<void> {
  const c = await connect();
  const res = readCreateTopicsResponse(await c.request(API.CreateTopics, 3, createTopicsBody(name, partitions)));
  expect(res[0]!.error).toBe(0);
  c.close();
}

/** Proves the broker still answers after a misbehaving client, on a fresh connection. */
async function expectBrokerHealthy(): Promise<void> {
  const c = await connect();
  const r = await c.request(API.ApiVersions, 2, Buffer.alloc(0));
  expect(r.int16()).toBe(0);
  c.close();
}

function frame(payload: Buffer): Buffer {
  const size = Buffer.alloc(4);
  size.writeInt32BE(payload.length);
  return Buffer.concat([size, payload]);
}

beforeAll(async () => {
  broker = await startBroker({ port: 0, maxFrameBytes: 64 * 1024 });
});

afterAll(async () => {
  for (const c of clients) c.close();
  await broker.stop();
});

describe("version negotiation", () => {
  it("ApiVersions v0-v2 list every API with the advertised ranges", async () => {
    const c = await connect();
    for (const v of [0, 1, 2]) {
      const r = await c.request(API.ApiVersions, v, Buffer.alloc(0));
      expect(r.int16()).toBe(0);
      const ranges = new Map(r.array((r) => [r.int16(), [r.int16(), r.int16()]] as const));
      expect(ranges.get(0)).toEqual([3, 7]);
      expect(ranges.get(1)).toEqual([4, 11]);
      expect(ranges.get(3)).toEqual([1, 6]);
      expect(ranges.get(10)![0]).toBe(0);
      expect(ranges.get(11)).toEqual([0, 5]);
      expect(ranges.get(8)![0]).toBeLessThanOrEqual(1);
      expect(ranges.get(9)).toEqual([1, 4]);
      expect(ranges.get(22)).toEqual([0, 1]);
      expect(ranges.get(18)).toEqual([0, 3]);
      if (v >= 1) expect(r.int32()).toBe(0);
      expect(r.remaining).toBe(0);
    }
  });

  it("ApiVersions v3 takes a flexible request and answers header v0 with a flexible body", async () => {
    const c = await connect();
    const body = new Writer().compactString("librdkafka").compactString("2.0.2").emptyTaggedFields();
    const r = await c.request(API.ApiVersions, 3, body, { flexibleHeader: true });
    // No tagged-field byte after the correlation id: the next int16 is the error code.
    expect(r.int16()).toBe(0);
    const ranges = r.compactArray((r) => {
      const entry = [r.int16(), r.int16(), r.int16()];
      r.skipTaggedFields();
      return entry;
    });
    expect(ranges.find((e) => e[0] === 1)).toEqual([1, 4, 11]);
    expect(r.int32()).toBe(0);
    r.skipTaggedFields();
    expect(r.remaining).toBe(0);
  });

  it("ApiVersions above v3 gets a v0 body with UNSUPPORTED_VERSION and the ranges", async () => {
    const c = await connect();
    const r = await c.request(
      API.ApiVersions,
      9,
      new Writer().compactString("x").compactString("y").emptyTaggedFields(),
      { flexibleHeader: true },
    );
    expect(r.int16()).toBe(35);
    const ranges = r.array((r) => [r.int16(), r.int16(), r.int16()]);
    expect(ranges.length).toBe(17);
    expect(r.remaining).toBe(0);
  });

  it("an unsupported version of another API closes the connection", async () => {
    const c = await connect();
    c.send(API.Metadata, 99, new Writer().int32(-1));
    expect(await c.next()).toBeNull();
    await expectBrokerHealthy();
  });

  it("a version below the advertised minimum closes the connection", async () => {
    const c = await connect();
    c.send(API.Produce, 2, produceBody("x", 0, null));
    expect(await c.next()).toBeNull();
    await expectBrokerHealthy();
  });
});

describe("bad input", () => {
  it("an unknown API key closes the connection", async () => {
    const c = await connect();
    c.send(4242, 0, Buffer.alloc(10));
    expect(await c.next()).toBeNull();
    await expectBrokerHealthy();
  });

  it("a frame over the size limit closes the connection", async () => {
    const c = await connect();
    const size = Buffer.alloc(4);
    size.writeInt32BE(64 * 1024 + 1);
    c.write(size);
    await c.closed;
    expect(c.isClosed).toBe(true);
    await expectBrokerHealthy();
  });

  it("negative and too-small frame sizes close the connection", async () => {
    for (const n of [-5, 0, 3]) {
      const c = await connect();
      const size = Buffer.alloc(4);
      size.writeInt32BE(n);
      c.write(Buffer.concat([size, Buffer.alloc(8)]));
      await c.closed;
      expect(c.isClosed).toBe(true);
    }
    await expectBrokerHealthy();
  });

  it("garbage bytes (an HTTP request) close the connection", async () => {
    const c = await connect();
    c.write(Buffer.from("GET / HTTP/1.1\r\nHost: kafka\r\n\r\n"));
    await c.closed;
    expect(c.isClosed).toBe(true);
    await expectBrokerHealthy();
  });

  it("a truncated body inside a complete frame closes the connection", async () => {
    const c = await connect();
    // Metadata v1 claiming 1000 topic names but carrying two bytes.
    const header = new Writer()
      .int16(API.Metadata)
      .int16(1)
      .int32(7)
      .nullableString("t")
      .int32(1000)
      .int16(5)
      .toBuffer();
    c.write(frame(header));
    expect(await c.next()).toBeNull();
    await expectBrokerHealthy();
  });

  it("a header cut before the client id closes the connection", async () => {
    const c = await connect();
    c.write(frame(new Writer().int16(API.Metadata).int16(1).int32(7).int16(20).toBuffer()));
    expect(await c.next()).toBeNull();
    await expectBrokerHealthy();
  });

  it("a forged string length closes the connection", async () => {
    const c = await connect();
    c.write(
      frame(new Writer().int16(API.Metadata).int16(1).int32(7).nullableString("t").int32(1).int16(30000).toBuffer()),
    );
    expect(await c.next()).toBeNull();
    await expectBrokerHealthy();
  });

  it("a client that disconnects mid-frame does not disturb the broker", async () => {
    const c = await connect();
    const size = Buffer.alloc(4);
    size.writeInt32BE(1000);
    c.write(Buffer.concat([size, Buffer.alloc(100)]));
    c.close();
    await c.closed;
    await expectBrokerHealthy();
  });

  it("a client that disconnects during a long-polling fetch does not disturb the broker", async () => {
    await createTopic("raw-longpoll-gone");
    const c = await connect();
    c.send(API.Fetch, 11, fetchBody("raw-longpoll-gone", 0, 0, { maxWaitMs: 30_000 }));
    c.close();
    await c.closed;
    const p = await connect();
    const res = readProduceResponse(
      await p.request(API.Produce, 7, produceBody("raw-longpoll-gone", 0, buildBatch([{ value: "after" }]))),
    );
    expect(res).toEqual({ error: 0, baseOffset: 0 });
  });

  it("random garbage of many shapes never takes the broker down", async () => {
    let seed = 42;
    const rand = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
    for (let i = 0; i < 60; i++) {
      const c = await connect();
      const len = 8 + Math.floor(rand() * 200);
      const payload = Buffer.alloc(len);
      for (let j = 0; j < len; j++) payload[j] = Math.floor(rand() * 256);
      // Keep the API key and version valid half the time so the body decoders get fuzzed too.
      if (i % 2 === 0) {
        const keys = [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 19, 20, 22];
        payload.writeInt16BE(keys[i % keys.length]!, 0);
        payload.writeInt16BE(1 + (i % 3), 2);
      }
      c.write(frame(payload));
      c.write(frame(new Writer().int16(API.ApiVersions).int16(0).int32(999).nullableString("x").toBuffer()));
      // Either the broker answered (possibly both frames) or it closed the connection: never a hang.
      const first = await c.next();
      if (first !== null) expect(first.length).toBeGreaterThanOrEqual(4);
      c.close();
    }
    await expectBrokerHealthy();
  });
});

describe("produce and fetch semantics", () => {
  it("assigns offsets by rewriting baseOffset; next offset is base + lastOffsetDelta + 1", async () => {
    await createTopic("raw-offsets");
    const c = await connect();
    const a = readProduceResponse(
      await c.request(
        API.Produce,
        7,
        produceBody("raw-offsets", 0, buildBatch([{ value: "a" }, { value: "b" }, { value: "c" }])),
      ),
    );
    const b = readProduceResponse(
      await c.request(API.Produce, 7, produceBody("raw-offsets", 0, buildBatch([{ value: "d" }]))),
    );
    expect(a).toEqual({ error: 0, baseOffset: 0 });
    expect(b).toEqual({ error: 0, baseOffset: 3 });
    const f = readFetchResponse(await c.request(API.Fetch, 11, fetchBody("raw-offsets", 0, 0)));
    expect(f.error).toBe(0);
    expect(f.highWatermark).toBe(4);
    expect(f.lastStableOffset).toBe(4);
    expect(f.logStartOffset).toBe(0);
    expect(f.preferredReadReplica).toBe(-1);
    expect(batchOffsets(f.records)).toEqual([
      { baseOffset: 0, lastOffset: 2 },
      { baseOffset: 3, lastOffset: 3 },
    ]);
  });

  it("a fetch from the middle of a batch returns that whole batch", async () => {
    const c = await connect();
    const f = readFetchResponse(await c.request(API.Fetch, 11, fetchBody("raw-offsets", 0, 1)));
    expect(batchOffsets(f.records)[0]).toEqual({ baseOffset: 0, lastOffset: 2 });
  });

  it("always returns at least one whole batch even when it is larger than maxBytes", async () => {
    const c = await connect();
    const f = readFetchResponse(await c.request(API.Fetch, 11, fetchBody("raw-offsets", 0, 0, { maxBytes: 10 })));
    expect(batchOffsets(f.records)).toEqual([{ baseOffset: 0, lastOffset: 2 }]);
  });

  it("answers OFFSET_OUT_OF_RANGE above the high watermark, empty at it", async () => {
    const c = await connect();
    const above = readFetchResponse(await c.request(API.Fetch, 11, fetchBody("raw-offsets", 0, 5)));
    expect(above.error).toBe(1);
    expect(above.highWatermark).toBe(4);
    const at = readFetchResponse(await c.request(API.Fetch, 11, fetchBody("raw-offsets", 0, 4)));
    expect(at.error).toBe(0);
    expect(at.records.length).toBe(0);
  });

  it("answers UNKNOWN_TOPIC_OR_PARTITION for a partition that does not exist", async () => {
    const c = await connect();
    const f = readFetchResponse(await c.request(API.Fetch, 11, fetchBody("raw-offsets", 7, 0)));
    expect(f.error).toBe(3);
    const p = readProduceResponse(
      await c.request(API.Produce, 7, produceBody("raw-no-such-topic", 0, buildBatch([{ value: "x" }]))),
    );
    expect(p.error).toBe(3);
  });

  it("a long-polling fetch is answered by a produce on another connection", async () => {
    await createTopic("raw-longpoll");
    const consumer = await connect();
    const producer = await connect();
    const pending = consumer.request(API.Fetch, 11, fetchBody("raw-longpoll", 0, 0, { maxWaitMs: 60_000 }));
    const p = readProduceResponse(
      await producer.request(API.Produce, 7, produceBody("raw-longpoll", 0, buildBatch([{ value: "wake" }]))),
    );
    expect(p.error).toBe(0);
    const f = readFetchResponse(await pending);
    expect(batchOffsets(f.records)).toEqual([{ baseOffset: 0, lastOffset: 0 }]);
  });

  it("rejects a batch whose CRC does not match with CORRUPT_MESSAGE", async () => {
    await createTopic("raw-crc");
    const c = await connect();
    const batch = buildBatch([{ value: "intact" }]);
    batch.writeUInt8(batch.readUInt8(batch.length - 3) ^ 0xff, batch.length - 3);
    expect(readProduceResponse(await c.request(API.Produce, 7, produceBody("raw-crc", 0, batch))).error).toBe(2);
    expect(
      readProduceResponse(await c.request(API.Produce, 7, produceBody("raw-crc", 0, Buffer.from("not a batch")))).error,
    ).toBe(2);
    const two = Buffer.concat([buildBatch([{ value: "a" }]), buildBatch([{ value: "b" }])]);
    expect(readProduceResponse(await c.request(API.Produce, 7, produceBody("raw-crc", 0, two))).error).toBe(2);
    const f = readFetchResponse(await c.request(API.Fetch, 11, fetchBody("raw-crc", 0, 0)));
    expect(f.highWatermark).toBe(0);
  });

  it("acks=0 gets no response, but the data is appended", async () => {
    await createTopic("raw-acks0");
    const c = await connect();
    c.send(API.Produce, 7, produceBody("raw-acks0", 0, buildBatch([{ value: "fire" }, { value: "forget" }]), 0));
    // The next frame we get must be the answer to the fetch, not to the produce.
    const f = readFetchResponse(await c.request(API.Fetch, 11, fetchBody("raw-acks0", 0, 0)));
    expect(f.highWatermark).toBe(2);
  });

  it("acks=1 is answered with the offset; a batch above maxMessageBytes gets MESSAGE_TOO_LARGE", async () => {
    await createTopic("raw-acks1");
    const c = await connect();
    expect(
      readProduceResponse(
        await c.request(API.Produce, 7, produceBody("raw-acks1", 0, buildBatch([{ value: "one" }]), 1)),
      ),
    ).toEqual({ error: 0, baseOffset: 0 });
    const small = await startBroker({ port: 0, maxMessageBytes: 1000 });
    try {
      const s = await RawClient.connect(small.address);
      await s.request(API.CreateTopics, 3, createTopicsBody("raw-big", 1));
      const big = buildBatch([{ value: "z".repeat(2000) }]);
      expect(readProduceResponse(await s.request(API.Produce, 7, produceBody("raw-big", 0, big))).error).toBe(10);
      s.close();
    } finally {
      await small.stop();
    }
  });

  it("rejects invalid acks with INVALID_REQUIRED_ACKS", async () => {
    const c = await connect();
    const p = readProduceResponse(
      await c.request(API.Produce, 7, produceBody("raw-acks0", 0, buildBatch([{ value: "x" }]), 2)),
    );
    expect(p.error).toBe(21);
  });

  it("ListOffsets answers earliest, latest and by timestamp", async () => {
    await createTopic("raw-times");
    const c = await connect();
    const t0 = 1_700_000_000_000;
    await c.request(
      API.Produce,
      7,
      produceBody(
        "raw-times",
        0,
        buildBatch([{ value: "a" }, { value: "b", timestampDelta: 1000 }], { baseTimestamp: t0 }),
      ),
    );
    await c.request(
      API.Produce,
      7,
      produceBody("raw-times", 0, buildBatch([{ value: "c" }], { baseTimestamp: t0 + 5000 })),
    );
    const ask = async (ts: number): Promise<[number, number, number]> => {
      const body = new Writer().int32(-1).int8(0);
      body.array(["raw-times"], (w, t) => {
        w.string(t);
        w.array([0], (w, p) => w.int32(p).int64(ts));
      });
      const r = await c.request(API.ListOffsets, 3, body);
      r.int32();
      r.int32();
      r.string();
      r.int32();
      r.int32();
      return [r.int16(), r.int64(), r.int64()];
    };
    expect(await ask(-2)).toEqual([0, -1, 0]);
    expect(await ask(-1)).toEqual([0, -1, 3]);
    expect(await ask(t0 + 500)).toEqual([0, t0 + 1000, 1]);
    expect(await ask(t0 + 4000)).toEqual([0, t0 + 5000, 2]);
    expect(await ask(t0 + 9000)).toEqual([0, -1, -1]);
  });
});

describe("idempotent producer", () => {
  it("deduplicates a retried batch and rejects a sequence gap", async () => {
    await createTopic("raw-idem");
    const c = await connect();
    const init = await c.request(API.InitProducerId, 1, new Writer().nullableString(null).int32(60_000));
    init.int32();
    expect(init.int16()).toBe(0);
    const producerId = init.int64();
    expect(init.int16()).toBe(0);
    const send = async (seq: number, values: string[]) =>
      readProduceResponse(
        await c.request(
          API.Produce,
          7,
          produceBody(
            "raw-idem",
            0,
            buildBatch(
              values.map((value) => ({ value })),
              { producerId, producerEpoch: 0, baseSequence: seq },
            ),
          ),
        ),
      );
    expect(await send(0, ["a", "b"])).toEqual({ error: 0, baseOffset: 0 });
    expect(await send(2, ["c"])).toEqual({ error: 0, baseOffset: 2 });
    // The retry of the first batch: success with its original offset, nothing appended.
    expect(await send(0, ["a", "b"])).toEqual({ error: 0, baseOffset: 0 });
    // Sequence 5 skips 3 and 4.
    expect((await send(5, ["z"])).error).toBe(45);
    expect(await send(3, ["d"])).toEqual({ error: 0, baseOffset: 3 });
    const f = readFetchResponse(await c.request(API.Fetch, 11, fetchBody("raw-idem", 0, 0)));
    expect(f.highWatermark).toBe(4);
  });

  it("hands out distinct producer ids and refuses transactional ids", async () => {
    const c = await connect();
    const ids = new Set<number>();
    for (let i = 0; i < 3; i++) {
      const r = await c.request(API.InitProducerId, 0, new Writer().nullableString(null).int32(60_000));
      r.int32();
      expect(r.int16()).toBe(0);
      ids.add(r.int64());
    }
    expect(ids.size).toBe(3);
    const t = await c.request(API.InitProducerId, 1, new Writer().nullableString("txn-1").int32(60_000));
    t.int32();
    expect(t.int16()).not.toBe(0);
  });
});

describe("metadata and admin", () => {
  it("Metadata with a null topic list returns all topics; this broker is controller", async () => {
    const c = await connect();
    const r = await c.request(API.Metadata, 6, new Writer().int32(-1).bool(false));
    r.int32();
    const brokers = r.array((r) => ({ id: r.int32(), host: r.string(), port: r.int32(), rack: r.nullableString() }));
    expect(brokers).toEqual([{ id: 1, host: broker.host, port: broker.port, rack: null }]);
    r.nullableString();
    expect(r.int32()).toBe(1);
    const topics = r.array((r) => {
      const error = r.int16();
      const name = r.string();
      r.bool();
      r.array((r) => [
        r.int16(),
        r.int32(),
        r.int32(),
        r.array((r) => r.int32()),
        r.array((r) => r.int32()),
        r.array((r) => r.int32()),
      ]);
      return { error, name };
    });
    expect(topics.map((t) => t.name)).toContain("raw-offsets");
    expect(topics.every((t) => t.error === 0)).toBe(true);
  });

  it("Metadata auto-creates a topic only when the request allows it", async () => {
    const c = await connect();
    const ask = async (topic: string, allow: boolean): Promise<number> => {
      const body = new Writer();
      body.array([topic], (w, t) => w.string(t));
      body.bool(allow);
      const r = await c.request(API.Metadata, 6, body);
      r.int32();
      r.array((r) => [r.int32(), r.string(), r.int32(), r.nullableString()]);
      r.nullableString();
      r.int32();
      r.int32();
      return r.int16();
    };
    expect(await ask("raw-not-created", false)).toBe(3);
    expect(await ask("raw-auto-created", true)).toBe(0);
    expect(await ask("raw-not-created", false)).toBe(3);
    expect(await ask("raw-auto-created", false)).toBe(0);
    expect(await ask("bad/name", true)).toBe(17);
  });

  it("CreateTopics below v4 rejects numPartitions -1 and refuses more replicas than brokers", async () => {
    const c = await connect();
    expect(
      readCreateTopicsResponse(await c.request(API.CreateTopics, 3, createTopicsBody("raw-default-parts", -1)))[0]!
        .error,
    ).toBe(37);
    expect(
      readCreateTopicsResponse(await c.request(API.CreateTopics, 3, createTopicsBody("raw-rf3", 1, 3)))[0]!.error,
    ).toBe(38);
    expect(
      readCreateTopicsResponse(await c.request(API.CreateTopics, 3, createTopicsBody("raw-offsets", 1)))[0]!.error,
    ).toBe(36);
    expect(readCreateTopicsResponse(await c.request(API.CreateTopics, 3, createTopicsBody("..", 1)))[0]!.error).toBe(
      17,
    );
  });

  it("listens on both loopback families when asked for localhost", async () => {
    const b = await startBroker({ host: "localhost", port: 0 });
    try {
      expect(b.address).toBe(`localhost:${b.port}`);
      for (const host of ["127.0.0.1", "::1"]) {
        const ok = await new Promise<boolean>((resolve) => {
          const s = net.connect({ host, port: b.port }, () => {
            s.destroy();
            resolve(true);
          });
          s.on("error", (e: NodeJS.ErrnoException) => resolve(e.code === "EADDRNOTAVAIL" || e.code === "EAFNOSUPPORT"));
        });
        expect(ok).toBe(true);
      }
    } finally {
      await b.stop();
    }
  });
});

describe("truncation of valid requests", () => {
  it("every strict prefix of a valid body closes the connection without side effects", async () => {
    await createTopic("raw-truncate");
    const join = new Writer().string("raw-trunc-g").int32(10_000).int32(10_000).string("").string("consumer");
    join.array(["range"], (w, p) => w.string(p).bytes(Buffer.from("meta")));
    const commit = new Writer().string("raw-trunc-g").int32(-1).string("").int64(-1);
    commit.array(["raw-truncate"], (w, t) => {
      w.string(t);
      w.array([0], (w, p) => w.int32(p).int64(5).nullableString("m"));
    });
    const metadata = new Writer();
    metadata.array(["raw-truncate", "raw-offsets"], (w, t) => w.string(t));
    metadata.bool(false);
    const cases: [number, number, Buffer][] = [
      [API.Produce, 7, produceBody("raw-truncate", 0, buildBatch([{ key: "k", value: "v" }])).toBuffer()],
      [API.Fetch, 11, fetchBody("raw-truncate", 0, 0).toBuffer()],
      [API.Metadata, 6, metadata.toBuffer()],
      [11, 2, join.toBuffer()],
      [8, 5, commit.toBuffer()],
      [API.CreateTopics, 3, createTopicsBody("raw-truncate-new", 1).toBuffer()],
    ];
    for (const [key, version, body] of cases) {
      for (let len = 0; len < body.length; len++) {
        const c = await RawClient.connect(broker.address);
        c.send(key, version, body.subarray(0, len));
        expect(await c.next()).toBeNull();
      }
    }
    // Nothing half-decoded was acted on: no append, no topic, no commit.
    const c = await connect();
    expect(readFetchResponse(await c.request(API.Fetch, 11, fetchBody("raw-truncate", 0, 0))).highWatermark).toBe(0);
    expect(
      readCreateTopicsResponse(await c.request(API.CreateTopics, 3, createTopicsBody("raw-truncate-new", 1)))[0]!.error,
    ).toBe(0);
  });
});

describe("pipelining around a bad request", () => {
  it("answers the requests before a malformed one, then closes without acting on what follows", async () => {
    await createTopic("raw-pipeline");
    const c = await connect();
    const good = c.send(API.Produce, 7, produceBody("raw-pipeline", 0, buildBatch([{ value: "kept" }])));
    c.send(API.Metadata, 99, Buffer.alloc(0));
    c.send(API.Produce, 7, produceBody("raw-pipeline", 0, buildBatch([{ value: "ignored" }])));
    const first = await c.next();
    expect(first!.readInt32BE(0)).toBe(good);
    expect(await c.next()).toBeNull();
    const check = await connect();
    expect(readFetchResponse(await check.request(API.Fetch, 11, fetchBody("raw-pipeline", 0, 0))).highWatermark).toBe(
      1,
    );
  });
});
