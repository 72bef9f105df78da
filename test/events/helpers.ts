import { randomBytes } from "node:crypto";
import { sql, type Kysely } from "kysely";
import { Kafka, logLevel, type Consumer, type ConsumerConfig, type KafkaMessage } from "kafkajs";
import { openDatabase, type Database } from "../../platform/db/database.js";
import { migrateToLatest } from "../../platform/db/migrate.js";
import { inboxMigration, type InboxDatabase } from "../../platform/events/consumer.js";
import { outboxClaimsMigration, outboxMigration, type OutboxDatabase } from "../../platform/events/outbox.js";
import { newEvent, protobufContentType, type EventEnvelope } from "../../platform/events/envelope.js";
import type { Logger } from "../../platform/telemetry/logger.js";

/** A table the handlers in these tests write to, standing in for a service's own state. */
export interface TestDatabase extends OutboxDatabase, InboxDatabase {
  effect: { event_id: string; key: string; note: string };
}

export interface DbBackend {
  name: "pglite" | "postgres";
  url?: string;
}

/** Embedded PGlite always; the real server too when DATABASE_URL is set (CI sets it). */
export function dbBackends(): DbBackend[] {
  const list: DbBackend[] = [{ name: "pglite" }];
  if (process.env.DATABASE_URL) list.push({ name: "postgres", url: process.env.DATABASE_URL });
  return list;
}

/** A fresh random schema with the outbox, inbox and a test effect table, as a service would migrate it. */
export async function openTestDatabase(backend: DbBackend): Promise<Database<TestDatabase>> {
  const schema = `events_t${randomBytes(4).toString("hex")}`;
  const database = await openDatabase<TestDatabase>({ url: backend.url, dataDir: "memory://", schema, poolMax: 5 });
  await migrateToLatest(database.db as Kysely<unknown>, schema, {
    "0001_outbox": outboxMigration,
    "0002_inbox": inboxMigration,
    "0003_effect": {
      async up(db) {
        await db.schema
          .createTable("effect")
          .addColumn("event_id", "text", (c) => c.primaryKey())
          .addColumn("key", "text", (c) => c.notNull())
          .addColumn("note", "text", (c) => c.notNull())
          .execute();
      },
    },
    "0004_outbox_claims": outboxClaimsMigration,
  });
  if (database.kind !== "postgres") return database;
  // The real server outlives the test run: leave nothing behind in it.
  return {
    ...database,
    async close() {
      await sql`drop schema if exists ${sql.id(schema)} cascade`.execute(database.db).catch(() => undefined);
      await database.close();
    },
  };
}

export function kafkaFor(address: string, clientId = "events-test"): Kafka {
  return new Kafka({
    clientId,
    brokers: [address],
    logLevel: logLevel.NOTHING,
    connectionTimeout: 1000,
    retry: { retries: 8, initialRetryTime: 50, maxRetryTime: 1000 },
  });
}

export const fastConsumer: Omit<ConsumerConfig, "groupId"> = {
  sessionTimeout: 6000,
  rebalanceTimeout: 10_000,
  heartbeatInterval: 500,
  maxWaitTimeInMs: 100,
  retry: { retries: 8, initialRetryTime: 50, maxRetryTime: 1000 },
};

export async function createTopics(kafka: Kafka, topics: { topic: string; numPartitions: number }[]): Promise<void> {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics, waitForLeaders: true });
  await admin.disconnect();
}

export interface Received {
  topic: string;
  partition: number;
  offset: string;
  message: KafkaMessage;
  headers: Record<string, string>;
}

/** A plain kafkajs consumer recording everything on `topics` from the beginning. */
export async function recordTopics(
  kafka: Kafka,
  topics: string[],
): Promise<{ received: Received[]; consumer: Consumer }> {
  const consumer = kafka.consumer({ groupId: `recorder-${randomBytes(4).toString("hex")}`, ...fastConsumer });
  const received: Received[] = [];
  await consumer.connect();
  await consumer.subscribe({ topics, fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ topic, partition, message }) => {
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(message.headers ?? {})) headers[k] = String(v);
      received.push({ topic, partition, offset: message.offset, message, headers });
    },
  });
  return { received, consumer };
}

export async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 30_000,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => silentLogger };

/** A short random suffix that keeps topics and groups of one test apart from another's. */
export const shortId = () => randomBytes(3).toString("hex");

/** An event whose payload is the note itself, so a test can tell which one a handler saw. */
export function testEvent(key: string, note: string): EventEnvelope {
  return newEvent({
    type: "medmesh.test.happened.v1",
    source: "/medmesh/test",
    key,
    payload: new TextEncoder().encode(note),
    contentType: protobufContentType("medmesh.test.v1.Happened"),
  });
}
