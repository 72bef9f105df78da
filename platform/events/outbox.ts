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
import { sql, type Insertable, type Kysely, type Migration } from "kysely";
import type { Kafka, Message, Producer } from "kafkajs";
import { logger as rootLogger, type Logger } from "../telemetry/logger.js";
import { eventHeaders, newEvent, type EventEnvelope, type NewEvent } from "./envelope.js";
import { claimBatch, markSent, releaseClaim, type ClaimedRow } from "./outbox-claims.js";
import type { OutboxDatabase, OutboxTable } from "./outbox-table.js";
import { withTimeout } from "../lifecycle/with-timeout.js";

export type { OutboxDatabase, OutboxTable } from "./outbox-table.js";

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

/**
 * Adds the columns a relay claims rows with, so it can publish them without holding a transaction
 * open (see claimBatch in relay-claims.ts). A migration of its own rather than a change to
 * outboxMigration, because services have already created their outbox with that one: add it to
 * the service's migration list after the outbox (e.g. "0006_outbox_claims").
 */
export const outboxClaimsMigration: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .alterTable("outbox")
      .addColumn("claim_id", "uuid")
      .addColumn("claimed_until", "timestamptz")
      .execute();
    // A claim asks, per row, whether an earlier row of the same key is still unsent: this keeps
    // that lookup on the unsent tail, like outbox_unsent_seq_idx.
    await db.schema
      .createIndex("outbox_unsent_key_seq_idx")
      .on("outbox")
      .columns(["topic", "key", "seq"])
      .where(sql.ref("sent_at"), "is", null)
      .execute();
  },
};

const w3c = new W3CTraceContextPropagator();

export type OutboxEvent = NewEvent & { topic: string };

export interface EnqueueOptions {
  /**
   * Leave the outbox as it is when it already holds an event with this id (the caller chose a
   * stable id, and an earlier attempt queued it). One statement instead of a look and an insert.
   */
  ifAbsent?: boolean;
}

/**
 * The outbox row of an event: id and time filled in, and the active trace context captured now,
 * because by the time the relay publishes, the request that caused it is gone.
 */
export function outboxRow(event: OutboxEvent): { envelope: EventEnvelope; row: Insertable<OutboxTable> } {
  const { topic, ...rest } = event;
  const e = newEvent(rest);
  if (!e.traceparent) {
    const carrier: Record<string, string> = {};
    w3c.inject(context.active(), carrier, defaultTextMapSetter);
    if (carrier.traceparent) e.traceparent = carrier.traceparent;
    if (carrier.tracestate) e.tracestate = carrier.tracestate;
  }
  return {
    envelope: e,
    row: {
      id: e.id,
      topic,
      key: e.key,
      type: e.type,
      source: e.source,
      payload: Buffer.from(e.payload.buffer, e.payload.byteOffset, e.payload.byteLength),
      headers: JSON.stringify(eventHeaders(e)),
      created_at: e.time,
    },
  };
}

/**
 * Records an event to publish. Call it with the transaction that makes the state change the
 * event describes: the event exists if and only if the change commits. Returns the complete
 * event (id and time filled in).
 */
export async function enqueue(trx: Kysely<any>, event: OutboxEvent, opts: EnqueueOptions = {}): Promise<EventEnvelope> {
  const { envelope, row } = outboxRow(event);
  const db = trx as Kysely<OutboxDatabase>;
  await db
    .insertInto("outbox")
    .values(row)
    .$if(opts.ifAbsent === true, (q) => q.onConflict((oc) => oc.column("id").doNothing()))
    .execute();
  return envelope;
}

export interface OutboxRelayOptions {
  /** The service's schema-scoped database (the one holding its outbox table). */
  db: Kysely<any>;
  kafka: Kafka;
  /** Rows claimed and published per round trip. Default 100. */
  batchSize?: number;
  /** How long to sleep when the outbox is empty and nobody calls wake(). Default 500 ms. */
  pollIntervalMs?: number;
  /** Delay after the n-th consecutive failure (n from 1). Default 250 ms doubling to 30 s. */
  backoffMs?: (failures: number) => number;
  /**
   * Longest one publish may take before it counts as failed and the producer is replaced; a broker
   * that accepts connections but never answers would otherwise hold the batch for kafkajs' 30 s
   * request timeout. Default 10 s.
   */
  publishTimeoutMs?: number;
  /**
   * How long a claim holds rows against other relays. Must outlast a publish (it is at least three
   * publish timeouts); it only matters when a relay dies holding a claim. Default 30 s.
   */
  claimLeaseMs?: number;
  /**
   * After a wake(), how long to wait before claiming, so that events committed just after it go
   * out in the same batch: under a steady stream of wakes every event would otherwise be a batch
   * of its own (a claim, a Kafka send and a mark per event). Adds up to this much to each event's
   * delay. Default 0.
   */
  wakeLingerMs?: number;
  logger?: Logger;
}

export interface OutboxRelay {
  /** Publish now rather than at the next poll: call after committing a transaction that enqueued. */
  wake(): void;
  /** Finishes the batch in flight, then disconnects. Unsent rows stay for the next start. */
  stop(): Promise<void>;
}

const tracer = trace.getTracer("medmesh-events");

class PublishTimeoutError extends Error {
  constructor(ms: number) {
    super(`Kafka did not acknowledge the batch within ${ms} ms`);
    this.name = "PublishTimeoutError";
  }
}

/**
 * Publishes unsent outbox rows in seq order and marks them sent, without ever holding a database
 * transaction while it talks to Kafka: it claims a batch in one short transaction, publishes after
 * that committed, then marks the rows sent (or, on failure, records the error and releases them)
 * with one statement. A broker outage therefore costs the database nothing but those statements,
 * which matters most on the embedded Postgres, where a transaction holds the one session every
 * service shares. How claims keep several relays from publishing a row twice or a key out of order
 * is in outbox-claims.ts.
 *
 * Delivery is at least once: if the process dies after Kafka acknowledged a batch and before it is
 * marked sent, the rows are published again once their claim expires. Consumers dedupe on the
 * event id (see consumer.ts).
 */
export function startOutboxRelay(opts: OutboxRelayOptions): OutboxRelay {
  const db = opts.db as Kysely<OutboxDatabase>;
  const batchSize = opts.batchSize ?? 100;
  const pollIntervalMs = opts.pollIntervalMs ?? 500;
  const backoffMs = opts.backoffMs ?? ((n: number) => Math.min(30_000, 250 * 2 ** (n - 1)));
  const publishTimeoutMs = opts.publishTimeoutMs ?? 10_000;
  const claimLeaseMs = Math.max(opts.claimLeaseMs ?? 30_000, 3 * publishTimeoutMs);
  const wakeLingerMs = Math.max(0, opts.wakeLingerMs ?? 0);
  const log = (opts.logger ?? rootLogger).child({ component: "outbox-relay" });

  let stopping = false;
  let woken = false;
  /** wake() was called since the last batch began: a transaction just committed rows. */
  let awaitingRows = false;
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
      // Bounded so a dead broker fails the batch within seconds; the relay's own backoff takes over
      // from there, and it can log and record each failure instead of retrying silently forever.
      retry: { retries: 3, initialRetryTime: 100, maxRetryTime: 1_000 },
    });
    await p.connect();
    producer = p;
    return p;
  }

  async function dropProducer(): Promise<void> {
    // After a failed send an idempotent producer's sequence numbers may no longer match the
    // broker's; a fresh producer id starts clean. Disconnecting also ends a send that timed out.
    const p = producer;
    producer = undefined;
    await p?.disconnect().catch(() => undefined);
  }

  /** Sends the claimed rows, each with a send span in the trace of the request that enqueued it. */
  async function publish(p: Producer, rows: ClaimedRow[]): Promise<void> {
    const byTopic = new Map<string, Message[]>();
    const links: Link[] = [];
    // One send span per event, inside the trace of the request that caused it, and the event goes
    // out carrying that span: the consumer's work then hangs off the relay's step, and a trace
    // reads request -> outbox send -> consumer as one chain.
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
    await tracer.startActiveSpan(
      "outbox publish",
      {
        kind: SpanKind.PRODUCER,
        links,
        attributes: { "messaging.system": "kafka", "messaging.batch.message_count": rows.length },
      },
      async (span) => {
        try {
          const sent = p.sendBatch({
            acks: -1,
            topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })),
          });
          await withTimeout(sent, publishTimeoutMs, () => new PublishTimeoutError(publishTimeoutMs));
        } catch (err) {
          span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
          for (const send of sends) send.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
          throw err;
        } finally {
          span.end();
          for (const send of sends) send.end();
        }
      },
    );
  }

  /** Returns the number of rows published; throws on failure (after recording it on the rows). */
  async function relayBatch(expectRows: boolean): Promise<number> {
    // The relay's own polling stays out of traces: it would be a span every half second.
    const quiet = <T>(fn: () => Promise<T>) => context.with(suppressTracing(context.active()), fn);
    // A timer's poll looks first, so an idle relay never connects or claims. After a wake() or a
    // full batch there is (almost surely) something to send, and the look would be one more round
    // trip per batch: under load that is one per event.
    if (!expectRows) {
      const pending = await quiet(() =>
        db.selectFrom("outbox").select("id").where("sent_at", "is", null).limit(1).executeTakeFirst(),
      );
      if (!pending) return 0;
    }
    // Connected before claiming: with the broker away, rows are not claimed only to be released.
    const p = await connectedProducer();
    const claim = await quiet(() => claimBatch(db, batchSize, claimLeaseMs));
    if (claim.rows.length === 0) return 0;
    try {
      await publish(p, claim.rows);
    } catch (err) {
      await releaseClaim(db, claim, err as Error).catch((e: unknown) =>
        // The lease still runs out on its own; the rows are only delayed by it.
        log.warn("could not release claimed outbox rows", { error: e as Error }),
      );
      throw err;
    }
    await markSent(db, claim);
    return claim.rows.length;
  }

  const loop = (async () => {
    let failures = 0;
    let expectRows = false;
    while (!stopping) {
      let sent = 0;
      try {
        if (awaitingRows && !expectRows && wakeLingerMs > 0) await sleep(wakeLingerMs, false);
        const kicked = awaitingRows || expectRows;
        awaitingRows = false;
        sent = await relayBatch(kicked);
        expectRows = sent >= batchSize;
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
      awaitingRows = true;
      if (interrupt?.wakeable) interrupt.done();
    },
    async stop() {
      stopping = true;
      interrupt?.done();
      await loop;
    },
  };
}
