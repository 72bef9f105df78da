import { sql } from "kysely";
import type { Kafka, Producer } from "kafkajs";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startBroker, type RunningBroker } from "../../deploy/embedded/kafka/index.js";
import type { Database } from "../../platform/db/database.js";
import {
  DlqHeaders,
  startIdempotentConsumer,
  type IdempotentConsumer,
  type IdempotentConsumerOptions,
} from "../../platform/events/consumer.js";
import { PoisonMessageError, toKafkaMessage } from "../../platform/events/envelope.js";
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

describe.each(dbBackends())("consumer work before the transaction, on $name", (backend) => {
  let broker: RunningBroker;
  let kafka: Kafka;
  let producer: Producer;
  let database: Database<TestDatabase>;
  const consumers: IdempotentConsumer[] = [];

  beforeAll(async () => {
    broker = await startBroker({ port: 0, dataDir: null });
    kafka = kafkaFor(broker.address);
    producer = kafka.producer({ idempotent: true });
    await producer.connect();
    database = await openTestDatabase(backend);
  });
  afterEach(async () => {
    for (const c of consumers.splice(0)) await c.stop();
  });
  afterAll(async () => {
    await producer?.disconnect();
    await database?.close();
    await broker?.stop();
  });

  async function consume<P>(
    opts: Pick<
      IdempotentConsumerOptions<TestDatabase, P>,
      "groupId" | "topics" | "handler" | "prepare" | "afterCommit" | "maxAttempts"
    >,
  ) {
    const c = await startIdempotentConsumer<TestDatabase, P>({
      kafka,
      db: database.db,
      backoffMs: () => 10,
      consumerConfig: fastConsumer,
      logger: silent,
      ...opts,
    });
    consumers.push(c);
    return c;
  }

  it("runs prepare outside the transaction, hands its result to the handler, skips it for duplicates, and calls afterCommit once per handled event", async () => {
    const topic = `prepare-${rand()}`;
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const events = [event("a", "one"), event("a", "two")];
    // The first event twice: the copy must not reach prepare.
    await producer.send({ topic, acks: -1, messages: [...events, events[0]!].map(toKafkaMessage) });
    const prepared: string[] = [];
    const committed: string[] = [];
    const c = await consume<string>({
      groupId: `g-${rand()}`,
      topics: [topic],
      async prepare(e) {
        prepared.push(e.id);
        // A query of its own: inside the handler's transaction this would wait for a connection
        // that transaction holds (PGlite has one), and never return.
        await sql`select 1`.execute(database.db);
        return `prepared ${new TextDecoder().decode(e.payload)}`;
      },
      async handler(e, trx, _delivery, note) {
        await trx.insertInto("effect").values({ event_id: e.id, key: e.key, note }).execute();
      },
      afterCommit: (e) => committed.push(e.id),
    });
    await waitFor("both events handled", () => committed.length === 2, 20_000);
    // The copy comes after both on the single partition; give it its turn.
    const marker = event("a", "marker");
    await producer.send({ topic, acks: -1, messages: [toKafkaMessage(marker)] });
    await waitFor("the marker handled", () => committed.includes(marker.id), 20_000);
    expect(prepared).toEqual([events[0]!.id, events[1]!.id, marker.id]);
    expect(committed).toEqual([events[0]!.id, events[1]!.id, marker.id]);
    const effects = await database.db
      .selectFrom("effect")
      .select(["event_id", "note"])
      .where(
        "event_id",
        "in",
        events.map((e) => e.id),
      )
      .orderBy("note")
      .execute();
    expect(effects.map((e) => e.note)).toEqual(["prepared one", "prepared two"]);
    expect(c.running()).toBe(true);
    await c.stop();
    expect(c.running()).toBe(false);
  });

  it("a failed prepare is retried with its attempt number, and the handler gets what the successful try prepared", async () => {
    const topic = `prepare-retry-${rand()}`;
    const groupId = `g-${rand()}`;
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const e = event("b", "flaky");
    await producer.send({ topic, acks: -1, messages: [toKafkaMessage(e)] });
    const tries: number[] = [];
    await consume<number>({
      groupId,
      topics: [topic],
      maxAttempts: 3,
      async prepare(_e, delivery) {
        tries.push(delivery.attempt);
        if (delivery.attempt < 3) throw new Error("not yet");
        return delivery.attempt;
      },
      async handler(ev, trx, _d, attempt) {
        await trx
          .insertInto("effect")
          .values({ event_id: ev.id, key: ev.key, note: `attempt ${attempt}` })
          .execute();
      },
    });
    await waitFor(
      "the third try",
      async () =>
        (await database.db.selectFrom("effect").select("note").where("event_id", "=", e.id).executeTakeFirst())
          ?.note === "attempt 3",
      20_000,
    );
    expect(tries).toEqual([1, 2, 3]);
  });

  it("a PoisonMessageError from the handler's side goes to the dead-letter topic at once, without retries", async () => {
    const topic = `prepare-poison-${rand()}`;
    const groupId = `g-${rand()}`;
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const bad = event("c", "unreadable");
    const good = event("c", "fine");
    await producer.send({ topic, acks: -1, messages: [toKafkaMessage(bad), toKafkaMessage(good)] });
    const tries: string[] = [];
    const handled: string[] = [];
    await consume<undefined>({
      groupId,
      topics: [topic],
      maxAttempts: 3,
      async prepare(e) {
        tries.push(e.id);
        if (e.id === bad.id) throw new PoisonMessageError("the payload is not a Happened");
        return undefined;
      },
      async handler(e) {
        handled.push(e.id);
      },
    });
    // The consumer created its dead-letter topic at start; the recorder reads it from the beginning.
    const { received, consumer: recorder } = await recordTopics(kafka, [`${topic}.${groupId}.dlq`]);
    try {
      await waitFor("the dead letter and the next event", () => received.length === 1 && handled.length === 1, 20_000);
      expect(tries).toEqual([bad.id, good.id]);
      expect(handled).toEqual([good.id]);
      expect(received[0]!.headers).toMatchObject({
        [DlqHeaders.reason]: "invalid",
        [DlqHeaders.attempts]: "1",
        [DlqHeaders.error]: "the payload is not a Happened",
        ce_id: bad.id,
      });
    } finally {
      await recorder.disconnect();
    }
  });
});
