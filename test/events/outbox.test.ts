import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { trace } from "@opentelemetry/api";
import { InMemorySpanExporter } from "@opentelemetry/sdk-trace-base";
import type { Kafka } from "kafkajs";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startBroker, type RunningBroker } from "../../deploy/embedded/kafka/index.js";
import type { Database } from "../../platform/db/database.js";
import { protobufContentType, type EventEnvelope } from "../../platform/events/envelope.js";
import { enqueue, startOutboxRelay, type OutboxRelay } from "../../platform/events/outbox.js";
import { pruneOutbox } from "../../platform/events/pruning.js";
import type { Logger } from "../../platform/telemetry/logger.js";
import { startTelemetry } from "../../platform/telemetry/sdk.js";
import {
  createTopics,
  dbBackends,
  kafkaFor,
  openTestDatabase,
  recordTopics,
  waitFor,
  type Received,
  type TestDatabase,
} from "./helpers.js";

// Registers the context manager, so a span started here is the active context enqueue captures.
const telemetry = startTelemetry({
  serviceName: "events-outbox-test",
  logLevel: "error",
  exporter: new InMemorySpanExporter(),
});
afterAll(() => telemetry.shutdown());

const tracer = trace.getTracer("outbox-test");

function event(topic: string, key: string, n: number) {
  return {
    topic,
    type: "medmesh.test.happened.v1",
    source: "/medmesh/test",
    key,
    payload: new TextEncoder().encode(`${key}:${n}`),
    contentType: protobufContentType("medmesh.test.v1.Happened"),
  };
}

const uniqueTopic = (name: string) => `${name}-${randomBytes(3).toString("hex")}`;

/** Messages currently in a topic, summed over partitions: what was published, duplicates included. */
async function messagesIn(kafka: Kafka, topic: string): Promise<number> {
  const admin = kafka.admin();
  await admin.connect();
  const offsets = await admin.fetchTopicOffsets(topic);
  await admin.disconnect();
  return offsets.reduce((n, o) => n + Number(o.high) - Number(o.low), 0);
}

function payloadsByKey(received: Received[]): Map<string, string[]> {
  const byKey = new Map<string, string[]>();
  for (const r of received) {
    const key = r.message.key!.toString();
    byKey.set(key, [...(byKey.get(key) ?? []), r.message.value!.toString()]);
  }
  return byKey;
}

async function unsent(db: Database<TestDatabase>["db"]): Promise<number> {
  const row = await db
    .selectFrom("outbox")
    .select((eb) => eb.fn.countAll<number>().as("n"))
    .where("sent_at", "is", null)
    .executeTakeFirstOrThrow();
  return Number(row.n);
}

const quietLogger = (lines: string[] = []): Logger => {
  const make = (): Logger => ({
    debug: (m) => void lines.push(`debug ${m}`),
    info: (m) => void lines.push(`info ${m}`),
    warn: (m) => void lines.push(`warn ${m}`),
    error: (m) => void lines.push(`error ${m}`),
    child: () => make(),
  });
  return make();
};

describe.each(dbBackends())("outbox on $name", (backend) => {
  let broker: RunningBroker;
  let kafka: Kafka;
  let database: Database<TestDatabase>;
  const relays: OutboxRelay[] = [];
  const cleanups: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    broker = await startBroker({ port: 0, dataDir: null });
    kafka = kafkaFor(broker.address);
    database = await openTestDatabase(backend);
  });

  // A relay left running by a failed test would publish the next test's rows.
  afterEach(async () => {
    for (const r of relays.splice(0)) await r.stop();
    for (const c of cleanups.splice(0)) await c();
  });

  afterAll(async () => {
    await database?.close();
    await broker?.stop();
  });

  function relay(opts: Partial<Parameters<typeof startOutboxRelay>[0]> = {}): OutboxRelay {
    const r = startOutboxRelay({
      db: database.db,
      kafka,
      batchSize: 10,
      pollIntervalMs: 50,
      backoffMs: () => 20,
      logger: quietLogger(),
      ...opts,
    });
    relays.push(r);
    return r;
  }

  it("publishes committed events exactly once, in order per key, with CloudEvents headers and the trace; rolled-back ones never", async () => {
    const topic = uniqueTopic("outbox");
    await createTopics(kafka, [{ topic, numPartitions: 3 }]);
    const { db } = database;

    await expect(
      db.transaction().execute(async (trx) => {
        for (let i = 0; i < 3; i++) await enqueue(trx, event(topic, "rolled-back", i));
        throw new Error("the state change failed");
      }),
    ).rejects.toThrow("the state change failed");

    const keys = ["a", "b", "c", "d"];
    const enqueued: EventEnvelope[] = [];
    let traceId = "";
    let spanId = "";
    await tracer.startActiveSpan("request", async (span) => {
      traceId = span.spanContext().traceId;
      spanId = span.spanContext().spanId;
      await db.transaction().execute(async (trx) => {
        for (let n = 0; n < 12; n++) enqueued.push(await enqueue(trx, event(topic, keys[n % 4]!, n)));
      });
      span.end();
    });
    // A second transaction, outside any trace, after the first.
    await db.transaction().execute(async (trx) => {
      for (let n = 12; n < 20; n++) enqueued.push(await enqueue(trx, event(topic, keys[n % 4]!, n)));
    });

    const r = relay();
    r.wake();
    const { received, consumer } = await recordTopics(kafka, [topic]);
    cleanups.push(() => consumer.disconnect());
    await waitFor("20 events", () => received.length >= 20);
    await waitFor("all rows marked sent", async () => (await unsent(db)) === 0);

    expect(await messagesIn(kafka, topic)).toBe(20);
    expect(received.map((m) => m.message.key!.toString())).not.toContain("rolled-back");
    expect(new Set(received.map((m) => m.headers.ce_id)).size).toBe(20);

    const byKey = payloadsByKey(received);
    for (const [i, key] of keys.entries()) {
      const expected = Array.from({ length: 5 }, (_, j) => `${key}:${i + 4 * j}`);
      expect(byKey.get(key)).toEqual(expected);
    }
    // One key, one partition.
    for (const key of keys) {
      expect(new Set(received.filter((m) => m.message.key!.toString() === key).map((m) => m.partition)).size).toBe(1);
    }

    for (const e of enqueued) {
      const got = received.find((m) => m.headers.ce_id === e.id)!;
      expect(got.headers).toMatchObject({
        ce_specversion: "1.0",
        ce_type: "medmesh.test.happened.v1",
        ce_source: "/medmesh/test",
        ce_time: e.time.toISOString(),
        "content-type": "application/protobuf; proto=medmesh.test.v1.Happened",
      });
      expect(Buffer.from(got.message.value!).equals(Buffer.from(e.payload))).toBe(true);
    }
    const traced = received.filter((m) => Number(m.message.value!.toString().split(":")[1]) < 12);
    // Same trace as the request; the span is the relay's send of the event, a child of the request.
    for (const m of traced)
      expect(m.headers.traceparent).toMatch(new RegExp(`^00-${traceId}-(?!${spanId})[0-9a-f]{16}-01$`));
    const untraced = received.filter((m) => Number(m.message.value!.toString().split(":")[1]) >= 12);
    for (const m of untraced) expect(m.headers.traceparent).toBeUndefined();

    const rows = await db.selectFrom("outbox").selectAll().execute();
    expect(rows).toHaveLength(20);
    for (const row of rows) {
      expect(row.sent_at).not.toBeNull();
      expect(row.attempts).toBe(1);
      expect(row.last_error).toBeNull();
    }
    await r.stop();
    expect(await pruneOutbox(db, new Date(Date.now() + 60_000))).toBe(20);
  });

  it("two relays on one outbox publish each row once and keep per-key order", async () => {
    const topic = uniqueTopic("outbox-pair");
    await createTopics(kafka, [{ topic, numPartitions: 2 }]);
    const { db } = database;
    const first = relay({ batchSize: 7, pollIntervalMs: 10 });
    const second = relay({ batchSize: 7, pollIntervalMs: 10 });
    for (let t = 0; t < 10; t++) {
      await db.transaction().execute(async (trx) => {
        for (let n = t * 15; n < (t + 1) * 15; n++) await enqueue(trx, event(topic, `k${n % 3}`, n));
      });
      first.wake();
      second.wake();
    }
    await waitFor("all rows marked sent", async () => (await unsent(db)) === 0);
    await first.stop();
    await second.stop();
    expect(await messagesIn(kafka, topic)).toBe(150);
    const { received, consumer } = await recordTopics(kafka, [topic]);
    cleanups.push(() => consumer.disconnect());
    await waitFor("150 events", () => received.length >= 150);
    for (const [key, payloads] of payloadsByKey(received)) {
      const ns = payloads.map((p) => Number(p.split(":")[1]));
      expect(ns).toEqual([...ns].sort((x, y) => x - y));
      expect(ns).toHaveLength(50);
      expect(key).toMatch(/^k[012]$/);
    }
  });

  it("with a wake linger, events committed one by one with a wake each all go out once and in order; a stop during the linger loses nothing", async () => {
    const topic = uniqueTopic("outbox-linger");
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const { db } = database;
    // Only wakes drive this relay: its poll would come long after the test is over.
    const r = relay({ pollIntervalMs: 600_000, wakeLingerMs: 50 });
    for (let n = 0; n < 10; n++) {
      await db.transaction().execute((trx) => enqueue(trx, event(topic, "k", n)));
      r.wake();
    }
    await waitFor("all rows marked sent", async () => (await unsent(db)) === 0);
    const { received, consumer } = await recordTopics(kafka, [topic]);
    cleanups.push(() => consumer.disconnect());
    await waitFor("10 events", () => received.length >= 10);
    expect(received).toHaveLength(10);
    expect(
      payloadsByKey(received)
        .get("k")!
        .map((p) => Number(p.split(":")[1])),
    ).toEqual([...Array(10).keys()]);

    await db.transaction().execute((trx) => enqueue(trx, event(topic, "k", 10)));
    r.wake();
    await r.stop();
    const again = relay({ pollIntervalMs: 600_000, wakeLingerMs: 50 });
    again.wake();
    await waitFor("the last row sent", async () => (await unsent(db)) === 0);
    await waitFor("11 events", () => received.length >= 11);
    expect(received.map((m) => Number(m.message.value!.toString().split(":")[1]))).toEqual([...Array(11).keys()]);
  });

  it("stop() lets the batch in flight finish: everything published is marked sent", async () => {
    const topic = uniqueTopic("outbox-stop");
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const { db } = database;
    await db.transaction().execute(async (trx) => {
      for (let n = 0; n < 300; n++) await enqueue(trx, event(topic, `k${n % 5}`, n));
    });
    const lines: string[] = [];
    const r = startOutboxRelay({ db, kafka, batchSize: 20, pollIntervalMs: 10, logger: quietLogger(lines) });
    await waitFor("some rows sent", async () => (await unsent(db)) < 300);
    await r.stop();
    expect(lines.filter((l) => !l.startsWith("debug"))).toEqual([]);
    const sent = 300 - (await unsent(db));
    expect(await messagesIn(kafka, topic)).toBe(sent);
    // And a new relay picks up where it stopped.
    const again = relay({ batchSize: 50 });
    again.wake();
    await waitFor("the rest sent", async () => (await unsent(db)) === 0);
    await waitFor("the rest published", async () => (await messagesIn(kafka, topic)) === 300);
  });
});

describe.each(dbBackends())("outbox relay across a broker restart on $name", (backend) => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "medmesh-events-"));
  let broker: RunningBroker | undefined;
  let database: Database<TestDatabase> | undefined;
  let r: OutboxRelay | undefined;
  let stopConsumer: (() => Promise<void>) | undefined;

  afterAll(async () => {
    await r?.stop();
    await stopConsumer?.();
    await database?.close();
    await broker?.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it("keeps every event, in order, when the broker goes away and comes back", async () => {
    broker = await startBroker({ port: 0, dataDir });
    const port = broker.port;
    const kafka = kafkaFor(broker.address);
    database = await openTestDatabase(backend);
    const { db } = database;
    const topic = uniqueTopic("outbox-restart");
    await createTopics(kafka, [{ topic, numPartitions: 2 }]);
    const lines: string[] = [];
    r = startOutboxRelay({
      db,
      kafka,
      batchSize: 5,
      pollIntervalMs: 20,
      backoffMs: () => 50,
      logger: quietLogger(lines),
    });

    const enqueueRange = (from: number, to: number) =>
      db.transaction().execute(async (trx) => {
        for (let n = from; n < to; n++) await enqueue(trx, event(topic, `k${n % 2}`, n));
      });

    await enqueueRange(0, 10);
    r.wake();
    await waitFor("the first events sent", async () => (await unsent(db)) === 0);

    await broker.stop();
    broker = undefined;
    await enqueueRange(10, 20);
    r.wake();
    await waitFor("the relay to notice the outage", () =>
      lines.some((l) => l.startsWith("warn outbox publish failed")),
    );
    expect(await unsent(db)).toBe(10);

    broker = await startBroker({ port, dataDir });
    await enqueueRange(20, 30);
    r.wake();
    await waitFor("everything sent after the restart", async () => (await unsent(db)) === 0, 45_000);
    expect(lines).toContain("info outbox relay recovered");

    expect(await messagesIn(kafka, topic)).toBe(30);
    const { received, consumer } = await recordTopics(kafka, [topic]);
    stopConsumer = () => consumer.disconnect();
    await waitFor("30 events", () => received.length >= 30);
    for (const [key, payloads] of payloadsByKey(received)) {
      const start = key === "k0" ? 0 : 1;
      expect(payloads).toEqual(Array.from({ length: 15 }, (_, j) => `${key}:${start + 2 * j}`));
    }
  });
});
