import { randomUUID } from "node:crypto";
import type { Kafka, Producer } from "kafkajs";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startBroker, type RunningBroker } from "../../deploy/embedded/kafka/index.js";
import type { Database } from "../../platform/db/database.js";
import { startIdempotentConsumer, type IdempotentConsumer } from "../../platform/events/consumer.js";
import { protobufContentType, toKafkaMessage } from "../../platform/events/envelope.js";
import type { OutboxEvent } from "../../platform/events/outbox.js";
import {
  createTopics,
  dbBackends,
  fastConsumer,
  kafkaFor,
  openTestDatabase,
  waitFor,
  type TestDatabase,
  silentLogger as silent,
  shortId as rand,
  testEvent as event,
} from "./helpers.js";

describe.each(dbBackends())("consumer outboxEffect, on $name", (backend) => {
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

  it("queues each event's outcome once with its inbox row: a copy, or another event naming the same outcome id, adds nothing; no outcome records only the inbox row", async () => {
    const topic = `effect-${rand()}`;
    await createTopics(kafka, [{ topic, numPartitions: 1 }]);
    const outcomeId = randomUUID();
    // "same" names the outcome id of "first", as a re-driven version does under a fresh event id.
    const first = event("a", "first");
    const same = event("a", "same");
    const none = event("a", "none");
    const marker = event("a", "marker");
    const outcomeIds = new Map<string, string | undefined>([
      [first.id, outcomeId],
      [same.id, outcomeId],
      [none.id, undefined],
      [marker.id, randomUUID()],
    ]);
    const prepared: string[] = [];
    const committed: string[] = [];
    const c = await startIdempotentConsumer<TestDatabase, OutboxEvent | undefined>({
      kafka,
      db: database.db,
      groupId: `g-${rand()}`,
      topics: [topic],
      backoffMs: () => 10,
      consumerConfig: fastConsumer,
      logger: silent,
      checkInboxBeforePrepare: false,
      async prepare(e) {
        prepared.push(e.id);
        const id = outcomeIds.get(e.id);
        if (!id) return undefined;
        return {
          id,
          topic: `${topic}.out`,
          type: "medmesh.test.done.v1",
          source: "/medmesh/test",
          key: e.key,
          payload: new TextEncoder().encode(`done ${new TextDecoder().decode(e.payload)}`),
          contentType: protobufContentType("medmesh.test.v1.Done"),
        };
      },
      outboxEffect: (_e, _d, out) => out,
      afterCommit: (e) => committed.push(e.id),
    });
    consumers.push(c);
    // "first" twice: the copy runs prepare (the look is off) but is a duplicate at the inbox.
    await producer.send({ topic, acks: -1, messages: [first, first, same, none, marker].map(toKafkaMessage) });
    await waitFor("the marker handled", () => committed.includes(marker.id), 20_000);
    expect(prepared).toEqual([first.id, first.id, same.id, none.id, marker.id]);
    expect(committed).toEqual([first.id, same.id, none.id, marker.id]);

    const inbox = await database.db
      .selectFrom("inbox")
      .select("event_id")
      .where("event_id", "in", [first.id, same.id, none.id, marker.id])
      .execute();
    expect(inbox).toHaveLength(4);
    const queued = await database.db
      .selectFrom("outbox")
      .select(["id", "topic", "key", "payload", "headers"])
      .where("id", "in", [outcomeId, outcomeIds.get(marker.id)!])
      .orderBy("seq")
      .execute();
    expect(queued.map((r) => r.id)).toEqual([outcomeId, outcomeIds.get(marker.id)]);
    // The row is the one the first delivery wrote, complete with its CloudEvents headers.
    expect(new TextDecoder().decode(queued[0]!.payload)).toBe("done first");
    expect(queued[0]!.key).toBe("a");
    expect(queued[0]!.topic).toBe(`${topic}.out`);
    const headers =
      typeof queued[0]!.headers === "string" ? JSON.parse(queued[0]!.headers) : (queued[0]!.headers as object);
    expect(headers).toMatchObject({ ce_id: outcomeId, ce_type: "medmesh.test.done.v1" });
  });

  it("refuses to start with both a handler and an outboxEffect, or with neither", async () => {
    const base = { kafka, db: database.db, groupId: `g-${rand()}`, topics: [`none-${rand()}`], logger: silent };
    await expect(
      startIdempotentConsumer({ ...base, handler: async () => undefined, outboxEffect: () => undefined }),
    ).rejects.toThrow(/either a handler or an outboxEffect/);
    await expect(startIdempotentConsumer(base)).rejects.toThrow(/either a handler or an outboxEffect/);
  });
});
