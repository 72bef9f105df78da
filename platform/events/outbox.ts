import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  context,
  defaultTextMapSetter,
  trace,
  type Link,
  type Span,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator, suppressTracing } from "@opentelemetry/core";
import { sql, type ColumnType, type Generated, type Kysely, type Migration } from "kysely";
import type { Kafka, Message, Producer } from "kafkajs";
import { logger as rootLogger, type Logger } from "../telemetry/logger.js";
import { eventHeaders, newEvent, type EventEnvelope, type NewEvent } from "./envelope.js";

export interface OutboxTable {
  id: string;
  /** Commit-independent insertion order; the relay publishes in this order. */
  seq: Generated<number>;
  topic: string;
  key: string;
  type: string;
  source: string;
  payload: Uint8Array;
  /** Every Kafka header of the message, fixed at enqueue time. */
  headers: ColumnType<Record<string, string>, string, string>;
  created_at: Generated<Date>;
  sent_at: Date | null;
  attempts: Generated<number>;
  last_error: string | null;
}

/** Intersect a service's table types with this so its transactions can enqueue. */
export interface OutboxDatabase {
  outbox: OutboxTable;
}

/**
 * Creates the outbox table in the service's schema. Add it to the service's static migration
 * list under a name of its own (e.g. "0002_outbox"); it runs on the schema-scoped db the service
 * migrates with.
 */
export const outboxMigration: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable("outbox")
      .addColumn("id", "uuid", (c) => c.primaryKey())
      .addColumn("seq", "bigserial", (c) => c.notNull().unique())
      .addColumn("topic", "text", (c) => c.notNull())
      .addColumn("key", "text", (c) => c.notNull())
      .addColumn("type", "text", (c) => c.notNull())
      .addColumn("source", "text", (c) => c.notNull())
      .addColumn("payload", "bytea", (c) => c.notNull())
      .addColumn("headers", "jsonb", (c) => c.notNull())
      .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
      .addColumn("sent_at", "timestamptz")
      .addColumn("attempts", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("last_error", "text")
      .execute();
    // The relay only ever reads the unsent tail; a partial index keeps that cheap however many
    // sent rows are kept around.
    await db.schema
      .createIndex("outbox_unsent_seq_idx")
      .on("outbox")
      .column("seq")
      .where(sql.ref("sent_at"), "is", null)
      .execute();
  },
};

const w3c = new W3CTraceContextPropagator();

export type OutboxEvent = NewEvent & { topic: string };

/**
 * Records an event to publish. Call it with the transaction that makes the state change the
 * event describes: the event exists if and only if the change commits. The active trace context
 * is captured now, because by the time the relay publishes, the request that caused it is gone.
 * Returns the complete event (id and time filled in).
 */
export async function enqueue(trx: Kysely<any>, event: OutboxEvent): Promise<EventEnvelope> {
  const { topic, ...rest } = event;
  const e = newEvent(rest);
  if (!e.traceparent) {
    const carrier: Record<string, string> = {};
    w3c.inject(context.active(), carrier, defaultTextMapSetter);
    if (carrier.traceparent) e.traceparent = carrier.traceparent;
    if (carrier.tracestate) e.tracestate = carrier.tracestate;
  }
  const db = trx as Kysely<OutboxDatabase>;
  await db
    .insertInto("outbox")
    .values({
      id: e.id,
      topic,
      key: e.key,
      type: e.type,
      source: e.source,
      payload: Buffer.from(e.payload.buffer, e.payload.byteOffset, e.payload.byteLength),
      headers: JSON.stringify(eventHeaders(e)),
      created_at: e.time,
    })
    .execute();
  return e;
}

/** Deletes rows sent before `before`; returns how many. Sent rows are only kept for inspection. */
export async function pruneOutbox(db: Kysely<any>, before: Date): Promise<number> {
  const res = await (db as Kysely<OutboxDatabase>)
    .deleteFrom("outbox")
    .where("sent_at", "<", before)
    .executeTakeFirst();
  return Number(res.numDeletedRows);
}

export interface OutboxRelayOptions {
  /** The service's schema-scoped database (the one holding its outbox table). */
  db: Kysely<any>;
  kafka: Kafka;
  /** Rows published per round trip. Default 100. */
  batchSize?: number;
  /** How long to sleep when the outbox is empty and nobody calls wake(). Default 500 ms. */
  pollIntervalMs?: number;
  /** Delay after the n-th consecutive failure (n from 1). Default 250 ms doubling to 30 s. */
  backoffMs?: (failures: number) => number;
  logger?: Logger;
}

export interface OutboxRelay {
  /** Publish now rather than at the next poll: call after committing a transaction that enqueued. */
  wake(): void;
  /** Finishes the batch in flight, then disconnects. Unsent rows stay for the next start. */
  stop(): Promise<void>;
}

const tracer = trace.getTracer("medmesh-events");

/**
 * Publishes unsent outbox rows in seq order and marks them sent.
 *
 * Each batch is read `for update` and published inside one transaction, so a second relay (another
 * replica) waits on the row locks and then finds the rows sent: rows are published by one relay at
 * a time and never out of order. `skip locked` would let the second relay publish the next batch
 * while the first is still in flight, reordering events of the same key, so it is not used.
 * The price is one connection held for the length of a publish; the producer's own retries are
 * kept short so that a broker outage releases the connection quickly and the relay backs off
 * outside the transaction.
 *
 * Delivery is at least once: if the process dies after Kafka acknowledged a batch and before the
 * commit that marks it sent, the batch is published again at the next start. Consumers dedupe on
 * the event id (see consumer.ts).
 */
export function startOutboxRelay(opts: OutboxRelayOptions): OutboxRelay {
  const db = opts.db as Kysely<OutboxDatabase>;
  const batchSize = opts.batchSize ?? 100;
  const pollIntervalMs = opts.pollIntervalMs ?? 500;
  const backoffMs = opts.backoffMs ?? ((n: number) => Math.min(30_000, 250 * 2 ** (n - 1)));
  const log = (opts.logger ?? rootLogger).child({ component: "outbox-relay" });

  let stopping = false;
  let woken = false;
  let interrupt: { wakeable: boolean; done: () => void } | undefined;
  let producer: Producer | undefined;

  // wake() cuts short the idle poll but not a backoff: a busy service calling wake() on every
  // request must not turn a broker outage into a tight retry loop. stop() cuts short both.
  const sleep = (ms: number, wakeable: boolean) =>
    new Promise<void>((resolve) => {
      if (stopping || (wakeable && woken)) {
        woken = false;
        resolve();
        return;
      }
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        interrupt = undefined;
        if (wakeable) woken = false;
        resolve();
      }
      interrupt = { wakeable, done };
    });

  async function connectedProducer(): Promise<Producer> {
    if (producer) return producer;
    const p = opts.kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      // Bounded so a dead broker fails the batch (and releases its transaction) within seconds;
      // the relay's own backoff takes over from there.
      retry: { retries: 3, initialRetryTime: 100, maxRetryTime: 1_000 },
    });
    await p.connect();
    producer = p;
    return p;
  }

  async function dropProducer(): Promise<void> {
    // After a failed send an idempotent producer's sequence numbers may no longer match the
    // broker's; a fresh producer id starts clean.
    const p = producer;
    producer = undefined;
    await p?.disconnect().catch(() => undefined);
  }

  /** Returns the number of rows published; throws on failure (after recording it on the rows). */
  async function relayBatch(): Promise<number> {
    const pending = await context.with(suppressTracing(context.active()), () =>
      db.selectFrom("outbox").select("id").where("sent_at", "is", null).limit(1).executeTakeFirst(),
    );
    if (!pending) return 0;
    const p = await connectedProducer();
    const outcome = await db.transaction().execute(async (trx) => {
      const rows = await trx
        .selectFrom("outbox")
        .select(["id", "topic", "key", "payload", "headers", "created_at"])
        .where("sent_at", "is", null)
        .orderBy("seq")
        .limit(batchSize)
        .forUpdate()
        .execute();
      if (rows.length === 0) return { sent: 0 };
      const ids = rows.map((r) => r.id);
      const byTopic = new Map<string, Message[]>();
      const links: Link[] = [];
      // One send span per event, inside the trace of the request that caused it, and the event
      // goes out carrying that span: the consumer's work then hangs off the relay's step, and a
      // trace reads request -> outbox send -> consumer as one chain.
      const sends: Span[] = [];
      for (const r of rows) {
        const stored = typeof r.headers === "string" ? (JSON.parse(r.headers) as Record<string, string>) : r.headers;
        const parentContext = w3c.extract(ROOT_CONTEXT, stored, { get: (c, k) => c[k], keys: Object.keys });
        const parent = trace.getSpanContext(parentContext);
        const headers = { ...stored };
        if (parent) {
          links.push({ context: parent });
          const send = tracer.startSpan(
            `${r.topic} send`,
            {
              kind: SpanKind.PRODUCER,
              attributes: {
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": r.topic,
                "messaging.message.id": stored.ce_id ?? r.id,
              },
            },
            parentContext,
          );
          sends.push(send);
          w3c.inject(trace.setSpan(parentContext, send), headers, defaultTextMapSetter);
        }
        const list = byTopic.get(r.topic) ?? [];
        list.push({
          key: r.key,
          value: Buffer.from(r.payload),
          headers,
          timestamp: String(new Date(r.created_at).getTime()),
        });
        byTopic.set(r.topic, list);
      }
      const error = await tracer.startActiveSpan(
        "outbox publish",
        {
          kind: SpanKind.PRODUCER,
          links,
          attributes: { "messaging.system": "kafka", "messaging.batch.message_count": rows.length },
        },
        async (span) => {
          try {
            await p.sendBatch({
              acks: -1,
              topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })),
            });
            return undefined;
          } catch (err) {
            span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
            for (const send of sends) send.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
            return err as Error;
          } finally {
            span.end();
            for (const send of sends) send.end();
          }
        },
      );
      // Either way the transaction commits: a failure is recorded on the rows for operators,
      // and the rows stay unsent for the next attempt.
      await trx
        .updateTable("outbox")
        .set((eb) => ({
          attempts: eb("attempts", "+", 1),
          ...(error ? { last_error: error.message.slice(0, 1000) } : { sent_at: new Date(), last_error: null }),
        }))
        .where("id", "in", ids)
        .execute();
      return error ? { sent: 0, error } : { sent: rows.length };
    });
    if (outcome.error) throw outcome.error;
    return outcome.sent;
  }

  const loop = (async () => {
    let failures = 0;
    while (!stopping) {
      let sent = 0;
      try {
        sent = await relayBatch();
        if (failures > 0) log.info("outbox relay recovered", { after_failures: failures });
        failures = 0;
      } catch (err) {
        failures++;
        log.warn("outbox publish failed; retrying", { error: err as Error, failures });
        await dropProducer();
        await sleep(backoffMs(failures), false);
        continue;
      }
      // A full batch means more is probably waiting: go again without sleeping.
      if (sent < batchSize) await sleep(pollIntervalMs, true);
    }
    await dropProducer();
  })();

  return {
    wake() {
      woken = true;
      if (interrupt?.wakeable) interrupt.done();
    },
    async stop() {
      stopping = true;
      interrupt?.done();
      await loop;
    },
  };
}
