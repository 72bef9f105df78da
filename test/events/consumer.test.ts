import type { Kafka, Producer } from "kafkajs";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startBroker, type RunningBroker } from "../../deploy/embedded/kafka/index.js";
import type { Database } from "../../platform/db/database.js";
import {
  DlqHeaders,
  startIdempotentConsumer,
  type EventHandler,
  type IdempotentConsumer,
} from "../../platform/events/consumer.js";
import { toKafkaMessage } from "../../platform/events/envelope.js";
import type { Logger } from "../../platform/telemetry/logger.js";
import {
  createTopics,
  dbBackends,
  fastConsumer,
  kafkaFor,
  openTestDatabase,
  recordTopics,
  waitFor,
  type TestDatabase,
  silentLogger as silent,
  shortId as rand,
  testEvent as event,
} from "./helpers.js";

// Every behaviour holds whether events are handled one at a time or in batches (batchSize).
const modes = dbBackends().flatMap((b) => [
  { ...b, batchSize: 1, mode: "one at a time" },
  { ...b, batchSize: 8, mode: "in batches of 8" },
]);

describe.each(modes)("idempotent consumer on $name, $mode", (backend) => {
  const { batchSize } = backend;
  let broker: RunningBroker;
  let kafka: Kafka;
  let producer: Producer;
  let database: Database<TestDatabase>;
  const consumers: IdempotentConsumer[] = [];
  const cleanups: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    broker = await startBroker({ port: 0, dataDir: null });
    kafka = kafkaFor(broker.address);
    producer = kafka.producer({ idempotent: true });
    await producer.connect();
    database = await openTestDatabase(backend);
  });

  afterEach(async () => {
    for (const c of consumers.splice(0)) await c.stop();
    for (const c of cleanups.splice(0)) await c();
  });

  afterAll(async () => {
    await producer?.disconnect();
    await database?.close();
    await broker?.stop();
  });

  async function consume(
    groupId: string,
    topics: string[],
    handler: EventHandler,
    maxAttempts = 3,
  ): Promise<IdempotentConsumer> {
    const c = await startIdempotentConsumer({
      kafka,
      groupId,
      topics,
      db: database.db,
      handler,
      maxAttempts,
      batchSize,
      backoffMs: () => 10,
      consumerConfig: fastConsumer,
      logger: silent,
    });
    consumers.push(c);
    return c;
  }

  /** Committed offsets of the group have reached the end of every partition: all of it was dealt with. */
  async function caughtUp(groupId: string, topic: string): Promise<boolean> {
    const admin = kafka.admin();
    await admin.connect();
    try {
      const [ends, committed] = await Promise.all([
        admin.fetchTopicOffsets(topic),
        admin.fetchOffsets({ groupId, topics: [topic] }),
      ]);
      const done = new Map(committed[0]!.partitions.map((p) => [p.partition, Number(p.offset)]));
      return ends.every((e) => done.get(e.partition) === Number(e.high));
    } finally {
      await admin.disconnect();
    }
  }

  it("passes over events it does not accept: no handler call, no inbox row, and the offset is committed", async () => {
    const topic = `consumer-accepts-${rand()}`;
    const groupId = `g-${rand()}`;
    await createTopics(kafka, [{ topic, numPartitions: 2 }]);
    const wanted = Array.from({ length: 4 }, (_, i) => event(`agg-${i}`, `wanted-${i}`));
    // Same keys, another type: what a service's own outcome events look like on a shared topic.
    const others = Array.from({ length: 6 }, (_, i) => ({
      ...event(`agg-${i % 4}`, `other-${i}`),
      type: "medmesh.test.answered.v1",
    }));
    await producer.send({ topic, acks: -1, messages: [...wanted, ...others].map(toKafkaMessage) });

    const calls: string[] = [];
    const c = await startIdempotentConsumer({
      kafka,
      groupId,
      topics: [topic],
      db: database.db,
      accepts: (e) => e.type === "medmesh.test.happened.v1",
      handler: async (e) => void calls.push(e.id),
      batchSize,
      backoffMs: () => 10,
      consumerConfig: fastConsumer,
      logger: silent,
    });
    consumers.push(c);
    await waitFor("the group to commit past all 10 messages", () => caughtUp(groupId, topic));

    expect(calls.sort()).toEqual(wanted.map((e) => e.id).sort());
    const inbox = await database.db.selectFrom("inbox").select("event_id").where("group_id", "=", groupId).execute();
    expect(inbox.map((r) => r.event_id).sort()).toEqual(wanted.map((e) => e.id).sort());
  });

  it("passes over other types by their header alone, even when the rest of such a message is broken", async () => {
    const topic = `consumer-accepts-type-${rand()}`;
    const groupId = `g-${rand()}`;
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const wanted = Array.from({ length: 3 }, (_, i) => event(`agg-${i}`, `wanted-${i}`));
    const other = toKafkaMessage({ ...event("agg-0", "other"), type: "medmesh.test.answered.v1" });
    // Not a valid event (no source), but not this group's type either: nothing to dead-letter.
    delete (other.headers as Record<string, unknown>).ce_source;
    const invalidWanted = toKafkaMessage(event("agg-1", "invalid"));
    delete (invalidWanted.headers as Record<string, unknown>).ce_source;
    await producer.send({
      topic,
      acks: -1,
      messages: [
        toKafkaMessage(wanted[0]!),
        other,
        toKafkaMessage(wanted[1]!),
        invalidWanted,
        toKafkaMessage(wanted[2]!),
      ],
    });
    const calls: string[] = [];
    const c = await startIdempotentConsumer({
      kafka,
      groupId,
      topics: [topic],
      db: database.db,
      acceptsType: (t) => t === "medmesh.test.happened.v1",
      handler: async (e) => void calls.push(new TextDecoder().decode(e.payload)),
      batchSize,
      backoffMs: () => 10,
      consumerConfig: fastConsumer,
      logger: silent,
    });
    consumers.push(c);
    await waitFor("the group to commit past all 5 messages", () => caughtUp(groupId, topic));
    expect(calls).toEqual(["wanted-0", "wanted-1", "wanted-2"]);
    const admin = kafka.admin();
    await admin.connect();
    const dlq = await admin.fetchTopicOffsets(`${topic}.${groupId}.dlq`);
    await admin.disconnect();
    // Only the message of its own type that is broken.
    expect(dlq.reduce((n, p) => n + Number(p.high), 0)).toBe(1);
  });

  it("keeps partition order and handles each event once when one in the middle fails first", async () => {
    const topic = `consumer-order-${rand()}`;
    const groupId = `g-${rand()}`;
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const events = Array.from({ length: 30 }, (_, i) => event(`agg-${i % 3}`, `n${i}`));
    await producer.send({ topic, acks: -1, messages: events.map(toKafkaMessage) });
    const order: string[] = [];
    const attempts: number[] = [];
    const transactions = new Set<unknown>();
    await consume(groupId, [topic], async (e, trx, delivery) => {
      const note = new TextDecoder().decode(e.payload);
      transactions.add(trx);
      await trx.insertInto("effect").values({ event_id: e.id, key: e.key, note }).execute();
      if (note === "n13") {
        attempts.push(delivery.attempt);
        if (delivery.attempt === 1) throw new Error("fails once");
      }
      order.push(note);
    });
    await waitFor("the group to move past every event", () => caughtUp(groupId, topic));
    const effects = await database.db
      .selectFrom("effect")
      .select("note")
      .where(
        "event_id",
        "in",
        events.map((e) => e.id),
      )
      .execute();
    expect(effects).toHaveLength(30);
    expect(attempts).toEqual([1, 2]);
    // What committed, in the order it committed: the handler calls of rolled-back tries removed.
    const committed = order.filter((n, at) => order.indexOf(n, at + 1) === -1);
    expect(committed).toEqual(events.map((_, i) => `n${i}`));
    // Batches shared transactions; one at a time, each event had its own.
    if (batchSize > 1) expect(transactions.size).toBeLessThan(30);
    else expect(transactions.size).toBeGreaterThanOrEqual(30);
  });

  it("handles every event once even when Kafka delivers it twice", async () => {
    const topic = `consumer-dup-${rand()}`;
    const groupId = `g-${rand()}`;
    await createTopics(kafka, [{ topic, numPartitions: 2 }]);
    const events = Array.from({ length: 10 }, (_, i) => event(`agg-${i % 4}`, `n${i}`));
    await producer.send({ topic, acks: -1, messages: events.map(toKafkaMessage) });
    // The same events again, as a relay that crashed before marking them sent would republish them.
    await producer.send({ topic, acks: -1, messages: [events[1]!, events[4]!, events[7]!].map(toKafkaMessage) });

    const calls: string[] = [];
    const c = await consume(groupId, [topic], async (e, trx) => {
      calls.push(e.id);
      await trx
        .insertInto("effect")
        .values({ event_id: e.id, key: e.key, note: new TextDecoder().decode(e.payload) })
        .execute();
    });
    await waitFor("the group to consume all 13 messages", () => caughtUp(groupId, topic));
    // A duplicate arriving after the consumer restarts is skipped as well.
    await c.stop();
    await producer.send({ topic, acks: -1, messages: [toKafkaMessage(events[0]!)] });
    await consume(groupId, [topic], async (e) => {
      calls.push(e.id);
    });
    await waitFor("the group to consume the late duplicate", () => caughtUp(groupId, topic));

    expect(calls.sort()).toEqual(events.map((e) => e.id).sort());
    const effects = await database.db
      .selectFrom("effect")
      .selectAll()
      .where(
        "event_id",
        "in",
        events.map((e) => e.id),
      )
      .execute();
    expect(effects).toHaveLength(10);
    const inbox = await database.db.selectFrom("inbox").selectAll().where("group_id", "=", groupId).execute();
    expect(inbox.map((r) => r.event_id).sort()).toEqual(events.map((e) => e.id).sort());
  });

  it("gives each consumer group its own inbox entry", async () => {
    const topic = `consumer-groups-${rand()}`;
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const e = event("agg", "shared");
    await producer.send({ topic, acks: -1, messages: [toKafkaMessage(e)] });
    const seen: string[] = [];
    await consume("indexer", [topic], async () => void seen.push("indexer"));
    await consume("notifier", [topic], async () => void seen.push("notifier"));
    await waitFor("both groups", () => seen.length === 2);
    expect(seen.sort()).toEqual(["indexer", "notifier"]);
  });

  it("retries a failing handler and applies the event once when it finally succeeds", async () => {
    const topic = `consumer-retry-${rand()}`;
    const groupId = `g-${rand()}`;
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const flaky = event("agg-flaky", "flaky");
    await producer.send({ topic, acks: -1, messages: [toKafkaMessage(flaky)] });

    const attempts: number[] = [];
    await consume(groupId, [topic], async (e, trx, delivery) => {
      attempts.push(delivery.attempt);
      // Written before the failure: it must be rolled back with the attempt, or the third
      // attempt would collide with it.
      await trx
        .insertInto("effect")
        .values({ event_id: e.id, key: e.key, note: `attempt ${delivery.attempt}` })
        .execute();
      if (delivery.attempt < 3) throw new Error(`transient failure ${delivery.attempt}`);
    });
    await waitFor("the group to move past the event", () => caughtUp(groupId, topic));

    expect(attempts).toEqual([1, 2, 3]);
    const effects = await database.db.selectFrom("effect").selectAll().where("event_id", "=", flaky.id).execute();
    expect(effects.map((r) => r.note)).toEqual(["attempt 3"]);
    const admin = kafka.admin();
    await admin.connect();
    const dlq = await admin.fetchTopicOffsets(`${topic}.${groupId}.dlq`);
    await admin.disconnect();
    expect(dlq.reduce((n, p) => n + Number(p.high), 0)).toBe(0);
  });

  it("dead-letters a poison message with error headers and goes on with the partition", async () => {
    const topic = `consumer-poison-${rand()}`;
    const groupId = `g-${rand()}`;
    const dlqTopic = `${topic}.${groupId}.dlq`;
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const poison = event("agg-1", "poison");
    const after = event("agg-1", "after");
    const invalid = toKafkaMessage(event("agg-1", "invalid"));
    delete (invalid.headers as Record<string, unknown>).ce_type;
    const last = event("agg-1", "last");
    await producer.send({
      topic,
      acks: -1,
      messages: [toKafkaMessage(poison), toKafkaMessage(after), invalid, toKafkaMessage(last)],
    });

    const handled: string[] = [];
    let poisonCalls = 0;
    await consume(groupId, [topic], async (e, trx) => {
      const note = new TextDecoder().decode(e.payload);
      if (note === "poison") {
        poisonCalls++;
        await trx.insertInto("effect").values({ event_id: e.id, key: e.key, note }).execute();
        throw new Error("cannot handle this one");
      }
      handled.push(note);
    });
    await waitFor("the group to move past every message", () => caughtUp(groupId, topic));
    expect(handled).toEqual(["after", "last"]);
    expect(poisonCalls).toBe(3);
    expect(await database.db.selectFrom("effect").selectAll().where("event_id", "=", poison.id).execute()).toEqual([]);
    expect(await database.db.selectFrom("inbox").selectAll().where("event_id", "=", poison.id).execute()).toEqual([]);

    const { received, consumer } = await recordTopics(kafka, [dlqTopic]);
    cleanups.push(() => consumer.disconnect());
    await waitFor("two dead letters", () => received.length >= 2);
    const [failed, refused] = received;
    expect(failed!.message.key!.toString()).toBe("agg-1");
    expect(failed!.message.value!.toString()).toBe("poison");
    expect(failed!.headers).toMatchObject({
      ce_id: poison.id,
      ce_type: poison.type,
      [DlqHeaders.reason]: "failed",
      [DlqHeaders.error]: "cannot handle this one",
      [DlqHeaders.attempts]: "3",
      [DlqHeaders.topic]: topic,
      [DlqHeaders.partition]: "0",
      [DlqHeaders.offset]: "0",
      [DlqHeaders.group]: groupId,
    });
    expect(Number.isNaN(Date.parse(failed!.headers[DlqHeaders.failedAt]!))).toBe(false);
    expect(refused!.message.value!.toString()).toBe("invalid");
    expect(refused!.headers).toMatchObject({
      [DlqHeaders.reason]: "invalid",
      [DlqHeaders.error]: "missing header ce_type",
      [DlqHeaders.attempts]: "0",
      [DlqHeaders.offset]: "2",
    });
  });

  it("does not dead-letter events while its own database is down; it leaves them for redelivery", async () => {
    const topic = `consumer-dbdown-${rand()}`;
    const groupId = `g-${rand()}`;
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const own = await openTestDatabase(backend);
    const lines: string[] = [];
    const recording = (): Logger => ({
      debug() {},
      info() {},
      warn: (m) => void lines.push(m),
      error: (m) => void lines.push(m),
      child: () => recording(),
    });
    const c = await startIdempotentConsumer({
      kafka,
      groupId,
      topics: [topic],
      db: own.db,
      handler: async () => {},
      batchSize,
      backoffMs: () => 10,
      consumerConfig: { ...fastConsumer, retry: { retries: 1000, initialRetryTime: 20, maxRetryTime: 100 } },
      logger: recording(),
    });
    consumers.push(c);
    await own.close();
    await producer.send({ topic, acks: -1, messages: [toKafkaMessage(event("agg", "during the outage"))] });
    const outageNoticed = () =>
      lines.filter((l) => l === "database unavailable; leaving the event for redelivery").length;
    // Seen more than once: Kafka delivered the event again after the first give-up.
    await waitFor("two give-ups", () => outageNoticed() >= 2);
    expect(lines).not.toContain("event failed every attempt; dead-lettering it");
    const admin = kafka.admin();
    await admin.connect();
    const dlq = await admin.fetchTopicOffsets(`${topic}.${groupId}.dlq`);
    const committed = await admin.fetchOffsets({ groupId, topics: [topic] });
    await admin.disconnect();
    expect(dlq.reduce((n, p) => n + Number(p.high), 0)).toBe(0);
    expect(committed[0]!.partitions[0]!.offset).not.toBe("1");
  });

  it("stop() finishes the event in hand and commits its offset", async () => {
    const topic = `consumer-stop-${rand()}`;
    const groupId = `g-${rand()}`;
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const slow = event("agg", "slow");
    await producer.send({ topic, acks: -1, messages: [toKafkaMessage(slow)] });
    let started!: () => void;
    const handlerStarted = new Promise<void>((r) => (started = r));
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const c = await consume(groupId, [topic], async (e, trx) => {
      started();
      await released;
      await trx.insertInto("effect").values({ event_id: e.id, key: e.key, note: "finished" }).execute();
    });
    await handlerStarted;
    const stopping = c.stop();
    let stopped = false;
    void stopping.then(() => (stopped = true));
    await new Promise((r) => setTimeout(r, 100));
    expect(stopped).toBe(false);
    release();
    await stopping;
    expect(await database.db.selectFrom("effect").select("note").where("event_id", "=", slow.id).execute()).toEqual([
      { note: "finished" },
    ]);
    expect(await caughtUp(groupId, topic)).toBe(true);
  });
});
