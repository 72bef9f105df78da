import { Code, ConnectError } from "@connectrpc/connect";
import type { Kafka, Producer } from "kafkajs";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startBroker, type RunningBroker } from "../../deploy/embedded/kafka/index.js";
import type { Database } from "../../platform/db/database.js";
import {
  DlqHeaders,
  startIdempotentConsumer,
  type DeliveryInfo,
  type EventHandler,
  type IdempotentConsumer,
} from "../../platform/events/consumer.js";
import { toKafkaMessage, type EventEnvelope } from "../../platform/events/envelope.js";
import {
  createTopics,
  dbBackends,
  fastConsumer,
  kafkaFor,
  openTestDatabase,
  recordTopics,
  sleep,
  waitFor,
  type TestDatabase,
  silentLogger as silent,
  shortId as rand,
  testEvent as event,
} from "./helpers.js";

const note = (e: EventEnvelope) => new TextDecoder().decode(e.payload);

const unavailable = () => new ConnectError("documents is unavailable right now; try again shortly", Code.Unavailable);

describe.each(dbBackends())("transient and permanent failures in the consumer on $name", (backend) => {
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
    topic: string,
    handler: EventHandler,
    transientBackoffMs: (n: number) => number = () => 5,
  ): Promise<IdempotentConsumer> {
    const c = await startIdempotentConsumer({
      kafka,
      groupId,
      topics: [topic],
      db: database.db,
      handler,
      maxAttempts: 3,
      backoffMs: () => 5,
      transientBackoffMs,
      consumerConfig: fastConsumer,
      logger: silent,
    });
    consumers.push(c);
    return c;
  }

  async function offsets(groupId: string, topic: string) {
    const admin = kafka.admin();
    await admin.connect();
    try {
      const [ends, committed] = await Promise.all([
        admin.fetchTopicOffsets(topic),
        admin.fetchOffsets({ groupId, topics: [topic] }),
      ]);
      return { ends, committed: committed[0]!.partitions };
    } finally {
      await admin.disconnect();
    }
  }

  async function dlqSize(topic: string): Promise<number> {
    const admin = kafka.admin();
    await admin.connect();
    try {
      return (await admin.fetchTopicOffsets(topic)).reduce((n, p) => n + Number(p.high), 0);
    } finally {
      await admin.disconnect();
    }
  }

  it("retries an unavailable dependency past maxAttempts, never dead-letters it, and holds the partition in order", async () => {
    const topic = `transient-order-${rand()}`;
    const groupId = `g-${rand()}`;
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const flaky = event("agg-1", "flaky");
    const behind = event("agg-2", "behind");
    await producer.send({ topic, acks: -1, messages: [toKafkaMessage(flaky), toKafkaMessage(behind)] });

    const log: string[] = [];
    const deliveries: DeliveryInfo[] = [];
    await consume(groupId, topic, async (e, trx, delivery) => {
      log.push(`${note(e)}#${delivery.attempt}`);
      if (note(e) === "flaky") {
        deliveries.push(delivery);
        // Written before the failure, so each failed try must roll it back.
        await trx
          .insertInto("effect")
          .values({ event_id: e.id, key: e.key, note: `try ${delivery.attempt}` })
          .execute();
        if (delivery.attempt <= 10) throw unavailable();
      }
    });
    await waitFor("both events handled", () => log.includes("behind#1"));

    // Eleven tries of the first event (ten unavailable, then success), and only then the second.
    expect(log).toEqual([...Array.from({ length: 11 }, (_, i) => `flaky#${i + 1}`), "behind#1"]);
    expect(deliveries.every((d) => d.failures === 0)).toBe(true);
    expect(await database.db.selectFrom("effect").select("note").where("event_id", "=", flaky.id).execute()).toEqual([
      { note: "try 11" },
    ]);
    await waitFor("the offsets to be committed", async () => {
      const { ends, committed } = await offsets(groupId, topic);
      return committed[0]!.offset === ends[0]!.high;
    });
    expect(await dlqSize(`${topic}.${groupId}.dlq`)).toBe(0);
  });

  it("dead-letters a permanent failure after maxAttempts permanent tries; transient tries in between do not count", async () => {
    const topic = `transient-poison-${rand()}`;
    const groupId = `g-${rand()}`;
    const dlqTopic = `${topic}.${groupId}.dlq`;
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const poison = event("agg-1", "poison");
    const after = event("agg-1", "after");
    await producer.send({ topic, acks: -1, messages: [toKafkaMessage(poison), toKafkaMessage(after)] });

    // permanent, transient, transient, permanent, transient, permanent: three permanent in six tries.
    const plan = ["permanent", "transient", "transient", "permanent", "transient", "permanent"];
    const seen: Array<{ attempt: number; failures: number }> = [];
    const handled: string[] = [];
    await consume(groupId, topic, async (e, _trx, delivery) => {
      if (note(e) !== "poison") return void handled.push(note(e));
      seen.push({ attempt: delivery.attempt, failures: delivery.failures });
      const kind = plan[delivery.attempt - 1] ?? "permanent";
      throw kind === "transient"
        ? unavailable()
        : new ConnectError("this version cannot be read", Code.InvalidArgument);
    });
    await waitFor("the event after the poison", () => handled.includes("after"));

    expect(seen).toEqual([
      { attempt: 1, failures: 0 },
      { attempt: 2, failures: 1 },
      { attempt: 3, failures: 1 },
      { attempt: 4, failures: 1 },
      { attempt: 5, failures: 2 },
      { attempt: 6, failures: 2 },
    ]);
    const { received, consumer } = await recordTopics(kafka, [dlqTopic]);
    cleanups.push(() => consumer.disconnect());
    await waitFor("the dead letter", () => received.length >= 1);
    expect(received).toHaveLength(1);
    expect(received[0]!.headers).toMatchObject({
      ce_id: poison.id,
      [DlqHeaders.reason]: "failed",
      [DlqHeaders.attempts]: "6",
      [DlqHeaders.error]: "[invalid_argument] this version cannot be read",
    });
  });

  it("stop() during a transient backoff returns without waiting it out, and leaves the offset uncommitted for redelivery", async () => {
    const topic = `transient-stop-${rand()}`;
    const groupId = `g-${rand()}`;
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const stuck = event("agg-1", "stuck");
    await producer.send({ topic, acks: -1, messages: [toKafkaMessage(stuck)] });

    let tries = 0;
    // A ten-minute backoff: if stop() waited for it, the race below would lose.
    const c = await consume(
      groupId,
      topic,
      async () => {
        tries++;
        throw unavailable();
      },
      () => 600_000,
    );
    await waitFor("the first failed try", () => tries === 1);
    await sleep(200); // into the backoff
    const outcome = await Promise.race([c.stop().then(() => "stopped"), sleep(20_000).then(() => "still waiting")]);
    expect(outcome).toBe("stopped");
    expect(tries).toBe(1);
    expect(await dlqSize(`${topic}.${groupId}.dlq`)).toBe(0);
    const { committed } = await offsets(groupId, topic);
    expect(committed[0]!.offset).toBe("-1");

    // The next member of the group gets the message again and, the outage over, handles it.
    const handled: string[] = [];
    await consume(groupId, topic, async (e) => void handled.push(e.id));
    await waitFor("the redelivered event", () => handled.length === 1);
    expect(handled).toEqual([stuck.id]);
  });
});
