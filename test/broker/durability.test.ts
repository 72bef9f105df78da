import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { CompressionTypes } from "kafkajs";
import { afterEach, describe, expect, it } from "vitest";
import { startBroker, type BrokerOptions, type RunningBroker } from "../../deploy/embedded/kafka/index.js";
import {
  RawClient,
  batchOffsets,
  buildBatch,
  createTopicsBody,
  fetchBody,
  produceBody,
  readFetchResponse,
  readProduceResponse,
} from "./helpers.js";
import { consumeUntil, fastConsumer, kafkaFor, partitioner } from "./kafkajs-helpers.js";

const dirs: string[] = [];
const running: RunningBroker[] = [];

function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), "medmesh-kafka-"));
  dirs.push(d);
  return d;
}

async function start(opts: BrokerOptions): Promise<RunningBroker> {
  const b = await startBroker({ port: 0, ...opts });
  running.push(b);
  return b;
}

afterEach(async () => {
  for (const b of running.splice(0)) await b.stop();
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function segmentFiles(dataDir: string, topic: string, partition = 0): string[] {
  return fs
    .readdirSync(path.join(dataDir, "topics", topic, String(partition)))
    .filter((f) => f.endsWith(".log"))
    .sort();
}

describe("restart", () => {
  it("keeps every acknowledged message and committed offset across a stop and start", async () => {
    const dataDir = tempDir();
    const topic = "durable";
    let broker = await start({ dataDir });
    let kafka = kafkaFor(broker.address);
    const admin = kafka.admin();
    await admin.connect();
    await admin.createTopics({ topics: [{ topic, numPartitions: 2 }] });
    await admin.disconnect();
    const producer = kafka.producer({ idempotent: true, createPartitioner: partitioner });
    await producer.connect();
    for (let i = 0; i < 10; i++) {
      await producer.send({
        topic,
        acks: -1,
        compression: i % 2 ? CompressionTypes.GZIP : CompressionTypes.None,
        messages: Array.from({ length: 20 }, (_, j) => ({ key: `k${j}`, value: `v${i * 20 + j}` })),
      });
    }
    await producer.disconnect();
    const consumer = kafka.consumer({ groupId: "durable-g", ...fastConsumer });
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumeUntil(consumer, (all) => all.length >= 120).done;
    await consumer.disconnect();
    const admin1 = kafka.admin();
    await admin1.connect();
    const committedBefore = await admin1.fetchOffsets({ groupId: "durable-g", topics: [topic] });
    await admin1.disconnect();
    await broker.stop();

    broker = await start({ dataDir });
    kafka = kafkaFor(broker.address);
    const admin2 = kafka.admin();
    await admin2.connect();
    const ends = await admin2.fetchTopicOffsets(topic);
    expect(ends.reduce((n, e) => n + Number(e.high), 0)).toBe(200);
    expect(await admin2.fetchOffsets({ groupId: "durable-g", topics: [topic] })).toEqual(committedBefore);
    await admin2.disconnect();

    const reader = kafka.consumer({ groupId: "durable-reader", ...fastConsumer });
    await reader.connect();
    await reader.subscribe({ topic, fromBeginning: true });
    const all = await consumeUntil(reader, (got) => got.length >= 200).done;
    await reader.disconnect();
    expect(new Set(all.map((m) => m.value)).size).toBe(200);

    // The resumed group continues after its commits, and new offsets continue after the old ones.
    const again = kafka.producer({ idempotent: true, createPartitioner: partitioner });
    await again.connect();
    const [res] = await again.send({ topic, acks: -1, messages: [{ key: "k0", value: "after-restart" }] });
    await again.disconnect();
    expect(Number(res!.baseOffset)).toBe(Number(ends.find((e) => e.partition === res!.partition)!.high));
    const resumed = kafka.consumer({ groupId: "durable-g", ...fastConsumer });
    await resumed.connect();
    await resumed.subscribe({ topic, fromBeginning: true });
    const rest = await consumeUntil(resumed, (got) => got.some((m) => m.value === "after-restart")).done;
    await resumed.disconnect();
    for (const p of committedBefore[0]!.partitions) {
      const fromPartition = rest.filter((m) => m.partition === p.partition).map((m) => m.offset);
      if (fromPartition.length > 0) expect(Math.min(...fromPartition)).toBe(Number(p.offset));
    }
  });

  it("cuts a torn tail left by a crash and keeps appending after the last whole batch", async () => {
    const dataDir = tempDir();
    let broker = await start({ dataDir });
    let c = await RawClient.connect(broker.address);
    await c.request(19, 3, createTopicsBody("torn", 1));
    for (let i = 0; i < 3; i++)
      await c.request(0, 7, produceBody("torn", 0, buildBatch([{ value: `m${i}` }, { value: `n${i}` }])));
    c.close();
    await broker.stop();
    const [file] = segmentFiles(dataDir, "torn");
    const full = path.join(dataDir, "topics", "torn", "0", file!);
    const half = buildBatch([{ value: "never acknowledged" }]).subarray(0, 40);
    fs.appendFileSync(full, half);

    broker = await start({ dataDir });
    c = await RawClient.connect(broker.address);
    const f = readFetchResponse(await c.request(1, 11, fetchBody("torn", 0, 0)));
    expect(f.highWatermark).toBe(6);
    expect(batchOffsets(f.records).map((b) => b.baseOffset)).toEqual([0, 2, 4]);
    expect(readProduceResponse(await c.request(0, 7, produceBody("torn", 0, buildBatch([{ value: "next" }]))))).toEqual(
      { error: 0, baseOffset: 6 },
    );
    c.close();
  });

  it("a deleted topic stays deleted after a restart", async () => {
    const dataDir = tempDir();
    let broker = await start({ dataDir });
    const admin = kafkaFor(broker.address).admin();
    await admin.connect();
    await admin.createTopics({
      topics: [
        { topic: "doomed", numPartitions: 1 },
        { topic: "kept", numPartitions: 1 },
      ],
    });
    await admin.deleteTopics({ topics: ["doomed"] });
    await admin.disconnect();
    await broker.stop();
    broker = await start({ dataDir, autoCreateTopics: false });
    const admin2 = kafkaFor(broker.address).admin();
    await admin2.connect();
    const topics = await admin2.listTopics();
    await admin2.disconnect();
    expect(topics).toContain("kept");
    expect(topics).not.toContain("doomed");
    expect(fs.existsSync(path.join(dataDir, "topics", "doomed"))).toBe(false);
  });
});

describe("retention", () => {
  it("deletes the oldest segments beyond retention.bytes and moves the log start offset", async () => {
    const dataDir = tempDir();
    const broker = await start({ dataDir, segmentBytes: 2000, retentionBytes: 5000, retentionMs: -1 });
    const c = await RawClient.connect(broker.address);
    await c.request(19, 3, createTopicsBody("sized", 1));
    const value = "x".repeat(400);
    for (let i = 0; i < 40; i++) await c.request(0, 7, produceBody("sized", 0, buildBatch([{ value }])));
    const before = segmentFiles(dataDir, "sized").length;
    expect(broker.applyRetention()).toBeGreaterThan(0);
    const after = segmentFiles(dataDir, "sized");
    expect(after.length).toBeLessThan(before);
    const logStart = Number(after[0]!.slice(0, 20));
    expect(logStart).toBeGreaterThan(0);
    const gone = readFetchResponse(await c.request(1, 11, fetchBody("sized", 0, 0)));
    expect(gone.error).toBe(1);
    expect(gone.logStartOffset).toBe(logStart);
    const kept = readFetchResponse(await c.request(1, 11, fetchBody("sized", 0, logStart)));
    expect(kept.error).toBe(0);
    expect(batchOffsets(kept.records)[0]!.baseOffset).toBe(logStart);
    expect(kept.highWatermark).toBe(40);
    c.close();

    // kafkajs resets to the new earliest offset instead of failing.
    const consumer = kafkaFor(broker.address).consumer({ groupId: "sized-g", ...fastConsumer });
    await consumer.connect();
    await consumer.subscribe({ topic: "sized", fromBeginning: true });
    const got = await consumeUntil(consumer, (all) => all.some((m) => m.offset === 39)).done;
    await consumer.disconnect();
    expect(got[0]!.offset).toBe(logStart);
  });

  it("deletes segments whose newest record is older than retention.ms", async () => {
    const broker = await start({ segmentBytes: 1000, retentionMs: 60_000, retentionBytes: -1 });
    const c = await RawClient.connect(broker.address);
    await c.request(19, 3, createTopicsBody("aged", 1));
    const old = Date.now() - 3600_000;
    for (let i = 0; i < 10; i++)
      await c.request(0, 7, produceBody("aged", 0, buildBatch([{ value: "y".repeat(300) }], { baseTimestamp: old })));
    for (let i = 0; i < 3; i++) await c.request(0, 7, produceBody("aged", 0, buildBatch([{ value: "y".repeat(300) }])));
    broker.applyRetention();
    const f = readFetchResponse(await c.request(1, 11, fetchBody("aged", 0, 0)));
    expect(f.error).toBe(1);
    expect(f.logStartOffset).toBeGreaterThanOrEqual(9);
    expect(f.highWatermark).toBe(13);
    c.close();
  });
});

describe("clients across a broker restart", () => {
  it("a connected kafkajs producer and consumer carry on after the broker restarts on the same port", async () => {
    const dataDir = tempDir();
    const first = await start({ dataDir });
    const port = first.port;
    const kafka = kafkaFor(first.address);
    const admin = kafka.admin();
    await admin.connect();
    await admin.createTopics({ topics: [{ topic: "restart-live", numPartitions: 1 }] });
    await admin.disconnect();
    const producer = kafka.producer({
      createPartitioner: partitioner,
      retry: { retries: 20, initialRetryTime: 50, maxRetryTime: 500 },
    });
    await producer.connect();
    const consumer = kafka.consumer({
      groupId: "restart-live-g",
      ...fastConsumer,
      retry: { retries: 20, initialRetryTime: 50, maxRetryTime: 500 },
    });
    await consumer.connect();
    await consumer.subscribe({ topic: "restart-live", fromBeginning: true });
    const { done, received } = consumeUntil(consumer, (all) => all.some((m) => m.value === "after"));
    await producer.send({ topic: "restart-live", acks: -1, messages: [{ value: "before" }] });
    while (received.length === 0) await new Promise((r) => setTimeout(r, 20));

    await first.stop();
    running.splice(running.indexOf(first), 1);
    await start({ dataDir, port });
    await producer.send({ topic: "restart-live", acks: -1, messages: [{ value: "after" }] });
    const got = await done;
    await consumer.disconnect();
    await producer.disconnect();
    // At-least-once: a commit in flight when the broker stopped may replay "before"; offsets must not change.
    const byOffset = new Map(got.map((m) => [m.offset, m.value]));
    expect([...byOffset].sort((a, b) => a[0] - b[0])).toEqual([
      [0, "before"],
      [1, "after"],
    ]);
  });
});
