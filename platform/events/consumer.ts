import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type TextMapGetter } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { sql, type Generated, type Kysely, type Migration, type Transaction } from "kysely";
import type { Consumer, ConsumerConfig, EachBatchPayload, IHeaders, Kafka, KafkaMessage, Producer } from "kafkajs";
import { queryShape } from "../db/query-shape.js";
import { logger as rootLogger, type Logger } from "../telemetry/logger.js";
import { PoisonMessageError, eventTypeOf, fromKafkaMessage, type EventEnvelope } from "./envelope.js";
import { deadLetterTopic } from "./dead-letter-topic.js";
import { classifyFailure, fullJitterBackoff, type FailureClass } from "./failure-class.js";
import { ensureTopics, topicPartitions } from "./kafka.js";
import { outboxRow, type OutboxEvent } from "./outbox.js";
import type { OutboxDatabase } from "./outbox-table.js";

export interface InboxTable {
  group_id: string;
  event_id: string;
  processed_at: Generated<Date>;
}

export interface InboxDatabase {
  inbox: InboxTable;
}

/**
 * Creates the inbox table in the service's schema; add it to the service's static migration list.
 * The key is (group_id, event_id) rather than the event id alone: one service may run several
 * consumer groups over the same topic (say, indexing and notifying), and each must handle the
 * event once, not once between them.
 */
export const inboxMigration: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable("inbox")
      .addColumn("group_id", "text", (c) => c.notNull())
      // text, not uuid: the id comes from the wire, and a producer outside the mesh may use any
      // CloudEvents id; a malformed uuid must not turn into a handler failure.
      .addColumn("event_id", "text", (c) => c.notNull())
      .addColumn("processed_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
      .addPrimaryKeyConstraint("inbox_pkey", ["group_id", "event_id"])
      .execute();
    await db.schema.createIndex("inbox_processed_at_idx").on("inbox").column("processed_at").execute();
  },
};

export interface DeliveryInfo {
  topic: string;
  partition: number;
  offset: string;
  /** 1 on the first try; counts every try, transient failures included. */
  attempt: number;
  /**
   * Permanent failures before this try. A try that fails permanently is the last when
   * `failures + 1` reaches maxAttempts: that is when a handler records its give-up.
   */
  failures: number;
}

export type EventHandler<DB = any, P = undefined> = (
  event: EventEnvelope,
  trx: Transaction<DB>,
  delivery: DeliveryInfo,
  prepared: P,
) => Promise<void>;

/** The part of handling an event that happens before its transaction opens; see `prepare`. */
export type EventPreparer<P> = (event: EventEnvelope, delivery: DeliveryInfo) => Promise<P>;

export interface IdempotentConsumerOptions<DB = any, P = undefined> {
  kafka: Kafka;
  groupId: string;
  topics: string[];
  /** The service's schema-scoped database (holding its inbox table). */
  db: Kysely<DB>;
  /**
   * Applies the event. Every write must go through `trx`: it commits together with the inbox row,
   * which is what makes a redelivery a no-op. Throwing rolls both back and counts as a failed attempt.
   */
  handler?: EventHandler<DB, P>;
  /**
   * Instead of `handler`, when the event's whole effect is at most one event queued in this
   * service's outbox (with a stable id: one an earlier attempt queued is kept). The inbox row and
   * the outbox row are then written by one statement, with no transaction around it: on the
   * embedded Postgres a round trip costs more than the statement, and BEGIN, two inserts and
   * COMMIT are four. Return undefined to queue nothing. The service's schema needs the outbox.
   */
  outboxEffect?: (event: EventEnvelope, delivery: DeliveryInfo, prepared: P) => OutboxEvent | undefined;
  /**
   * Work that must not hold the transaction open: calls to other services, long computations.
   * Runs before the transaction, only for events the inbox has not recorded, and its result is
   * handed to `handler`. It is not covered by the inbox: it runs again when an attempt fails, and
   * may run twice when two members get the same event at once, so it must be safe to repeat
   * (idempotent calls, keyed by the event or the aggregate). Keeping it outside matters most on
   * the embedded Postgres, where an open transaction holds the one session every service shares.
   * Throwing counts as a failed attempt, like the handler.
   */
  prepare?: EventPreparer<P>;
  /**
   * Whether the inbox is read before `prepare`, so a redelivered event does not repeat its outside
   * work. Default true. Turn it off when `prepare` finds out cheaply by itself that the work is
   * done (an idempotent call that answers with the recorded result): the look is then one more
   * round trip per event for nothing. The inbox insert still decides either way.
   */
  checkInboxBeforePrepare?: boolean;
  /**
   * Which events this consumer handles. Others (say, the service's own outcome events on a topic it
   * also publishes to) are passed over without a transaction or an inbox row; their offset is
   * committed like any other. Default: every event.
   */
  accepts?: (event: EventEnvelope) => boolean;
  /**
   * Which event types this consumer handles, decided from the type header alone, before the
   * message is decoded or traced: a group that wants one type of a busy topic passes over the
   * others for almost nothing. A message whose type header is missing or repeated is still read
   * (and dead-lettered as invalid). `accepts`, when given too, decides on the decoded event.
   */
  acceptsType?: (type: string) => boolean;
  /**
   * Events handled in one transaction (with `handler`; default 1, one at a time). Consecutive
   * events of a partition that Kafka has already delivered are taken together, up to this many:
   * their inbox rows and the handler's writes commit at once, so each commit (and each index
   * page the handler touches) is paid once per batch instead of once per event. Waiting for
   * more events never happens: a lone event is a batch of one. `prepare` runs for the events of
   * a batch concurrently (or `prepareBatch` once for all), so it must not depend on another
   * event of the same batch having been handled; the handler still sees them in partition order.
   * Any failure in a batch (prepare, handler, commit) rolls it back and its events are then
   * handled one at a time, with the usual retries and dead-letter path, so a failing event keeps
   * the per-event semantics and holds up only itself.
   */
  batchSize?: number;
  /** With batchSize: prepares a batch's fresh events at once (say, one embeddings call), in order; default `prepare` for each. */
  prepareBatch?: (events: EventEnvelope[], deliveries: DeliveryInfo[]) => Promise<P[]>;
  /** Called once the transaction that handled an event has committed (not for duplicates): wake a relay here. */
  afterCommit?: (event: EventEnvelope) => void;
  /** Permanent failures before the message goes to the dead-letter topic. Default 3. */
  maxAttempts?: number;
  /** Wait after permanent failure n (from 1). Default 2^n s. */
  backoffMs?: (failure: number) => number;
  /**
   * Wait after transient failure n (from 1) in a row. Transient failures are retried without a
   * count limit, so this must be capped. Default full jitter from 0.5 s doubling to a 30 s cap.
   */
  transientBackoffMs?: (retry: number) => number;
  /** Tells transient failures from permanent ones. Default `classifyFailure` (failure-class.ts). */
  classify?: (err: unknown) => FailureClass;
  /** Dead-letter topic for a source topic. Default `<topic>.<groupId>.dlq`. */
  dlqTopic?: (topic: string, groupId: string) => string;
  /** Where a group with no committed offset starts. Default true, so a new group misses nothing. */
  fromBeginning?: boolean;
  /** Partitions handled in parallel (order still holds within each). Default 1. */
  partitionsConsumedConcurrently?: number;
  /** kafkajs consumer settings (timeouts, retry); groupId is set from above. */
  consumerConfig?: Omit<ConsumerConfig, "groupId">;
  logger?: Logger;
}

export interface IdempotentConsumer {
  /**
   * Lets a try in progress finish, abandons any retry wait (the message is delivered again later,
   * its offset not committed), commits the offsets of finished messages and leaves the group.
   */
  stop(): Promise<void>;
  /** False once kafkajs gave up on the consumer (a crash it will not restart from) or it stopped. */
  running(): boolean;
}

const defaultDlqTopic = (topic: string, groupId: string): string => deadLetterTopic(topic, groupId);

/** Thrown out of eachMessage when stop() cuts a retry short: the offset must not be committed. */
class StoppingError extends Error {
  constructor() {
    super("the consumer is stopping; the message is left for redelivery");
    this.name = "StoppingError";
  }
}

/** Headers added to a dead-lettered message, next to all of its original headers. */
export const DlqHeaders = {
  reason: "dlq_reason",
  error: "dlq_error_message",
  attempts: "dlq_attempts",
  topic: "dlq_original_topic",
  partition: "dlq_original_partition",
  offset: "dlq_original_offset",
  group: "dlq_consumer_group",
  failedAt: "dlq_failed_at",
} as const;

const w3c = new W3CTraceContextPropagator();
const tracer = trace.getTracer("medmesh-events");

const headerGetter: TextMapGetter<IHeaders> = {
  keys: (c) => Object.keys(c),
  get: (c, k) => {
    const v = c[k];
    if (v === undefined) return undefined;
    return Array.isArray(v) ? v.map((x) => x.toString()) : v.toString();
  },
};

/**
 * Consumes events so that each one's effect is committed once per group, however often Kafka
 * delivers it (the handler may run more than once when an attempt fails and rolls back).
 *
 * Failures are retried in place, inside kafkajs' eachMessage, with the consumer heartbeating while
 * it waits, so the group does not evict it. Retrying in place (rather than pausing the partition
 * and seeking back) keeps per-key order trivially, at the cost of holding up a rebalance for at
 * most the retry budget: with the defaults 2 s + 4 s. Keep maxAttempts and backoffMs small
 * enough that their sum stays well under the rebalance timeout. A message that still fails, or
 * that is not a valid event at all, is published to the dead-letter topic with error headers and
 * its offset is committed, so it never blocks its partition. If the dead-letter publish itself
 * fails, or the service's database does not answer (the event is then not at fault), eachMessage
 * throws and kafkajs redelivers the message: nothing is skipped silently.
 */
export async function startIdempotentConsumer<DB = any, P = undefined>(
  opts: IdempotentConsumerOptions<DB, P>,
): Promise<IdempotentConsumer> {
  const db = opts.db as unknown as Kysely<InboxDatabase>;
  const outboxDb = opts.db as unknown as Kysely<InboxDatabase & OutboxDatabase>;
  if (!opts.handler === !opts.outboxEffect) throw new Error("give the consumer either a handler or an outboxEffect");
  const batchSize = Math.max(1, opts.batchSize ?? 1);
  if (batchSize > 1 && !opts.handler) throw new Error("batchSize needs a handler");
  const maxAttempts = Math.max(1, opts.maxAttempts ?? 3);
  const backoffMs = opts.backoffMs ?? ((n: number) => 2 ** n * 1000);
  const transientBackoffMs = opts.transientBackoffMs ?? fullJitterBackoff(500, 30_000);
  const classify = opts.classify ?? classifyFailure;
  const checkInboxBeforePrepare = opts.checkInboxBeforePrepare ?? true;
  // Fires on stop(): cuts retry waits short so shutdown never waits out a backoff.
  const stopping = new AbortController();
  const dlqTopic = opts.dlqTopic ?? defaultDlqTopic;
  const { groupId } = opts;
  const log = (opts.logger ?? rootLogger).child({ component: "event-consumer", group: groupId });

  // Dead-letter topics exist before the first failure, with the source's partition count so
  // the key-to-partition mapping (and per-key order) carries over; clusters that disallow
  // auto-creation would otherwise refuse the first dead letter.
  const partitions = await topicPartitions(opts.kafka, opts.topics);
  await ensureTopics(
    opts.kafka,
    opts.topics.map((t) => ({ topic: dlqTopic(t, groupId), numPartitions: partitions.get(t) ?? 1 })),
  );

  const dlq: Producer = opts.kafka.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    // Bounded, unlike kafkajs' idempotent default (forever): a dead-letter publish that cannot get
    // through should fail the message back to Kafka for redelivery, not hang stop() behind it.
    retry: { retries: 5, initialRetryTime: 300, maxRetryTime: 5_000 },
  });
  await dlq.connect();
  // stop() waits for the fetch in flight, which an idle broker holds for the whole wait: kafkajs'
  // 5 s default made every consumer add up to 5 s to a graceful stop. Waking each second instead
  // costs an idle consumer one small request a second.
  const consumer: Consumer = opts.kafka.consumer({ maxWaitTimeInMs: 1_000, ...opts.consumerConfig, groupId });
  let alive = true;
  consumer.on(consumer.events.CRASH, (e) => {
    log.error("consumer crashed", { error: e.payload.error, restart: e.payload.restart });
    if (!e.payload.restart) alive = false;
  });

  async function deadLetter(
    topic: string,
    partition: number,
    message: KafkaMessage,
    reason: string,
    error: string,
    attempts: number,
  ) {
    await dlq.send({
      topic: dlqTopic(topic, groupId),
      acks: -1,
      messages: [
        {
          key: message.key,
          value: message.value,
          headers: {
            ...message.headers,
            [DlqHeaders.reason]: reason,
            [DlqHeaders.error]: error.slice(0, 2000),
            [DlqHeaders.attempts]: String(attempts),
            [DlqHeaders.topic]: topic,
            [DlqHeaders.partition]: String(partition),
            [DlqHeaders.offset]: message.offset,
            [DlqHeaders.group]: groupId,
            [DlqHeaders.failedAt]: new Date().toISOString(),
          },
        },
      ],
    });
  }

  async function databaseAnswers(): Promise<boolean> {
    return sql`select 1`.execute(db).then(
      () => true,
      () => false,
    );
  }

  async function wait(ms: number, heartbeat: () => Promise<void>) {
    // kafkajs only heartbeats between messages; a long backoff inside one must do it itself.
    // heartbeat() is cheap when called early (it sends only once the interval has passed), and it
    // throws when a rebalance started, which abandons this message to its next owner. stop()
    // abandons it too: throwing keeps kafkajs from resolving (and committing) its offset.
    const until = Date.now() + ms;
    for (;;) {
      if (stopping.signal.aborted) throw new StoppingError();
      const left = until - Date.now();
      if (left <= 0) return;
      await new Promise<void>((r) => {
        const done = () => (clearTimeout(timer), stopping.signal.removeEventListener("abort", done), r());
        const timer = setTimeout(done, Math.min(left, 500));
        stopping.signal.addEventListener("abort", done, { once: true });
      });
      if (stopping.signal.aborted) throw new StoppingError();
      await heartbeat();
    }
  }

  function afterCommit(event: EventEnvelope) {
    // The event is handled and committed whatever the callback does; its failure must not retry it.
    try {
      opts.afterCommit?.(event);
    } catch (err) {
      log.warn("afterCommit failed", { event_id: event.id, error: err as Error });
    }
  }

  async function attemptOnce(event: EventEnvelope, delivery: DeliveryInfo): Promise<"duplicate" | "handled"> {
    let prepared = undefined as P;
    if (opts.prepare) {
      if (checkInboxBeforePrepare) {
        // A cheap look first, so a redelivered event does not repeat the outside work; the insert
        // below still decides, should another member be on the same event right now.
        const seen = await db
          .selectFrom("inbox")
          .select("event_id")
          .where("group_id", "=", groupId)
          .where("event_id", "=", event.id)
          .executeTakeFirst();
        if (seen) return "duplicate";
      }
      prepared = await opts.prepare(event, delivery);
    }
    if (opts.outboxEffect) return recordWithEffect(event, opts.outboxEffect(event, delivery, prepared));
    return db.transaction().execute(async (trx) => {
      const fresh = await trx
        .insertInto("inbox")
        .values({ group_id: groupId, event_id: event.id })
        .onConflict((oc) => oc.columns(["group_id", "event_id"]).doNothing())
        .returning("event_id")
        .executeTakeFirst();
      if (!fresh) return "duplicate" as const;
      await opts.handler!(event, trx as unknown as Transaction<DB>, delivery, prepared);
      return "handled" as const;
    });
  }

  // The statements of recordWithEffect, built and compiled once: one of them runs for every event.
  const fresh = (db: Kysely<InboxDatabase & OutboxDatabase>, group: string, eventId: string) =>
    db
      .insertInto("inbox")
      .values({ group_id: group, event_id: eventId })
      .onConflict((oc) => oc.columns(["group_id", "event_id"]).doNothing())
      .returning("event_id");
  const recordOnly = queryShape(() => outboxDb, 2, fresh);
  const recordAndQueue = queryShape(
    () => outboxDb,
    10,
    (
      db: Kysely<InboxDatabase & OutboxDatabase>,
      group: string,
      eventId: string,
      id: unknown,
      topic: unknown,
      key: unknown,
      type: unknown,
      source: unknown,
      payload: unknown,
      headers: unknown,
      createdAt: unknown,
    ) =>
      db
        .with("fresh", () => fresh(db, group, eventId))
        .with("queued", (q) =>
          q
            .insertInto("outbox")
            .columns(["id", "topic", "key", "type", "source", "payload", "headers", "created_at"])
            // Written only when the inbox row is new: a duplicate delivery queues nothing.
            .expression((eb) =>
              eb
                .selectFrom("fresh")
                .select([
                  sql<string>`cast(${id} as uuid)`.as("id"),
                  sql<string>`cast(${topic} as text)`.as("topic"),
                  sql<string>`cast(${key} as text)`.as("key"),
                  sql<string>`cast(${type} as text)`.as("type"),
                  sql<string>`cast(${source} as text)`.as("source"),
                  sql<Uint8Array>`cast(${payload} as bytea)`.as("payload"),
                  sql<string>`cast(${headers} as jsonb)`.as("headers"),
                  sql<Date>`cast(${createdAt} as timestamptz)`.as("created_at"),
                ]),
            )
            .onConflict((oc) => oc.column("id").doNothing()),
        )
        .selectFrom("fresh")
        .select("event_id"),
  );

  /** The inbox row and the event's outbox row in one statement; see `outboxEffect`. */
  async function recordWithEffect(event: EventEnvelope, effect: OutboxEvent | undefined) {
    if (!effect)
      return (await recordOnly.first(outboxDb, groupId, event.id)) ? ("handled" as const) : ("duplicate" as const);
    const { row } = outboxRow(effect);
    const recorded = await recordAndQueue.first(
      outboxDb,
      groupId,
      event.id,
      row.id,
      row.topic,
      row.key,
      row.type,
      row.source,
      row.payload,
      row.headers,
      row.created_at,
    );
    return recorded ? ("handled" as const) : ("duplicate" as const);
  }

  /** Passed over by its type header alone; see `acceptsType`. */
  function skippedByType(message: KafkaMessage): boolean {
    if (!opts.acceptsType) return false;
    const type = eventTypeOf(message);
    return type !== undefined && !opts.acceptsType(type);
  }

  /**
   * A message the batch path may take: a valid event this consumer accepts. Undefined for one it
   * passes over; "single" for one that is not a valid event (handled alone, which dead-letters it).
   */
  function batchable(message: KafkaMessage): EventEnvelope | undefined | "single" {
    if (skippedByType(message)) return undefined;
    let event: EventEnvelope;
    try {
      event = fromKafkaMessage(message);
    } catch {
      return "single";
    }
    if (opts.accepts && !opts.accepts(event)) return undefined;
    return event;
  }

  type BatchItem = { message: KafkaMessage; event: EventEnvelope };
  /** How a batch went: committed, or failed (at the event `failedAt` when the failure is that event's). */
  type BatchOutcome = { ok: true } | { ok: false; failedAt?: number; error: unknown };

  /** Handles consecutive events of one partition in one transaction; nothing is committed unless all are. */
  async function tryBatch(topic: string, partition: number, items: BatchItem[]): Promise<BatchOutcome> {
    return tracer.startActiveSpan(
      `${topic} process`,
      {
        kind: SpanKind.CONSUMER,
        attributes: {
          "messaging.system": "kafka",
          "messaging.operation.type": "process",
          "messaging.destination.name": topic,
          "messaging.destination.partition.id": String(partition),
          "messaging.batch.message_count": items.length,
          "messaging.consumer.group.name": groupId,
        },
      },
      async (span): Promise<BatchOutcome> => {
        let failedAt: number | undefined;
        try {
          let fresh = items.map((item, at) => ({ ...item, at }));
          if (opts.prepare && checkInboxBeforePrepare) {
            const seen = new Set(
              (
                await db
                  .selectFrom("inbox")
                  .select("event_id")
                  .where("group_id", "=", groupId)
                  .where(
                    "event_id",
                    "in",
                    items.map((i) => i.event.id),
                  )
                  .execute()
              ).map((r) => r.event_id),
            );
            fresh = fresh.filter((i) => !seen.has(i.event.id));
            if (fresh.length === 0) return { ok: true };
          }
          const deliveries = fresh.map((i): DeliveryInfo => ({
            topic,
            partition,
            offset: i.message.offset,
            attempt: 1,
            failures: 0,
          }));
          let prepared: P[];
          if (opts.prepareBatch) {
            prepared = await opts.prepareBatch(
              fresh.map((i) => i.event),
              deliveries,
            );
          } else if (opts.prepare) {
            const settled = await Promise.allSettled(fresh.map((i, n) => opts.prepare!(i.event, deliveries[n]!)));
            const failed = settled.findIndex((r) => r.status === "rejected");
            if (failed >= 0) {
              failedAt = fresh[failed]!.at;
              throw (settled[failed] as PromiseRejectedResult).reason;
            }
            prepared = settled.map((r) => (r as PromiseFulfilledResult<P>).value);
          } else prepared = fresh.map(() => undefined as P);
          const handled = await db.transaction().execute(async (trx) => {
            const done: EventEnvelope[] = [];
            for (const [n, { event, at }] of fresh.entries()) {
              const isNew = await trx
                .insertInto("inbox")
                .values({ group_id: groupId, event_id: event.id })
                .onConflict((oc) => oc.columns(["group_id", "event_id"]).doNothing())
                .returning("event_id")
                .executeTakeFirst();
              if (!isNew) continue;
              failedAt = at;
              await opts.handler!(event, trx as unknown as Transaction<DB>, deliveries[n]!, prepared[n]!);
              failedAt = undefined;
              done.push(event);
            }
            return done;
          });
          for (const event of handled) afterCommit(event);
          return { ok: true };
        } catch (error) {
          span.recordException(error as Error);
          return failedAt === undefined ? { ok: false, error } : { ok: false, failedAt, error };
        } finally {
          span.end();
        }
      },
    );
  }

  /**
   * Handles a run of events, as batches while they go through. When the handler or prepare of one
   * event fails, the events before it are committed as a batch again, the failing one goes on
   * alone with that failure counted as its first attempt (retries and dead-letter as usual), and
   * the ones after it form the next batch. A failure no single event owns (the commit, a
   * prepareBatch) sends the run through one event at a time.
   */
  async function handleRun(
    topic: string,
    partition: number,
    items: BatchItem[],
    heartbeat: () => Promise<void>,
    resolveOffset: (offset: string) => void,
  ): Promise<void> {
    let rest = items;
    while (rest.length > 0) {
      if (rest.length === 1) {
        await handleMessage(topic, partition, rest[0]!.message, heartbeat);
        resolveOffset(rest[0]!.message.offset);
        return;
      }
      const outcome = await whileHeartbeating(heartbeat, () => tryBatch(topic, partition, rest));
      if (outcome.ok) {
        resolveOffset(rest[rest.length - 1]!.message.offset);
        return;
      }
      log.debug("a batch failed; handling its events apart", { topic, partition, error: outcome.error as Error });
      if (outcome.failedAt === undefined) {
        for (const { message } of rest) {
          await handleMessage(topic, partition, message, heartbeat);
          resolveOffset(message.offset);
        }
        return;
      }
      const n = outcome.failedAt;
      if (n > 0) await handleRun(topic, partition, rest.slice(0, n), heartbeat, resolveOffset);
      await handleMessage(topic, partition, rest[n]!.message, heartbeat, outcome.error);
      resolveOffset(rest[n]!.message.offset);
      rest = rest.slice(n + 1);
    }
  }

  async function handleBatch(payload: EachBatchPayload): Promise<void> {
    const { batch, resolveOffset, heartbeat, isRunning, isStale, commitOffsetsIfNecessary } = payload;
    const { topic, partition } = batch;
    const messages = batch.messages;
    let i = 0;
    while (i < messages.length) {
      if (!isRunning() || isStale() || stopping.signal.aborted) return;
      const items: BatchItem[] = [];
      let last: KafkaMessage | undefined;
      let single: KafkaMessage | undefined;
      // The next events, up to batchSize. Messages passed over ride along (their offsets resolve
      // with the run); an invalid one ends the run and is handled alone after it.
      while (i < messages.length && items.length < batchSize) {
        const message = messages[i++]!;
        const event = batchable(message);
        if (event === "single") {
          single = message;
          break;
        }
        last = message;
        if (event) items.push({ message, event });
      }
      await handleRun(topic, partition, items, heartbeat, resolveOffset);
      if (last) resolveOffset(last.offset);
      if (single) {
        await handleMessage(topic, partition, single, heartbeat);
        resolveOffset(single.offset);
      }
      await heartbeat();
      await commitOffsetsIfNecessary();
    }
  }

  async function handleMessage(
    topic: string,
    partition: number,
    message: KafkaMessage,
    heartbeat: () => Promise<void>,
    /** The failure of a first attempt already made (in a batch): counted as attempt 1. */
    firstFailure?: unknown,
  ) {
    if (skippedByType(message)) return;
    const parent = w3c.extract(ROOT_CONTEXT, message.headers ?? {}, headerGetter);
    await tracer.startActiveSpan(
      `${topic} process`,
      {
        kind: SpanKind.CONSUMER,
        attributes: {
          "messaging.system": "kafka",
          "messaging.operation.type": "process",
          "messaging.destination.name": topic,
          "messaging.destination.partition.id": String(partition),
          "messaging.kafka.offset": Number(message.offset),
          "messaging.consumer.group.name": groupId,
        },
      },
      parent,
      async (span) => {
        try {
          let event: EventEnvelope;
          try {
            event = fromKafkaMessage(message);
          } catch (err) {
            if (!(err instanceof PoisonMessageError)) throw err;
            log.warn("dead-lettering an invalid message", {
              topic,
              partition,
              offset: message.offset,
              reason: err.reason,
            });
            span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
            await deadLetter(topic, partition, message, "invalid", err.reason, 0);
            return;
          }
          span.setAttribute("messaging.message.id", event.id);
          span.setAttribute("cloudevents.event_type", event.type);
          if (opts.accepts && !opts.accepts(event)) {
            // Nothing to do, so nothing to remember: an inbox row would only cost a write per event.
            span.setAttribute("medmesh.event.skipped", true);
            return;
          }
          // Only permanent failures count toward maxAttempts; transient ones retry in place, with a
          // capped, jittered backoff, for as long as they last. In place keeps the partition's
          // order: later messages of the partition wait behind this one.
          let failures = 0;
          let transientInARow = 0;
          for (let attempt = 1; ; attempt++) {
            try {
              const delivery = { topic, partition, offset: message.offset, attempt, failures };
              const outcome = await whileHeartbeating(heartbeat, () =>
                attempt === 1 && firstFailure !== undefined
                  ? Promise.reject(firstFailure as Error)
                  : attemptOnce(event, delivery),
              );
              span.setAttribute("medmesh.event.duplicate", outcome === "duplicate");
              if (outcome === "duplicate")
                log.debug("skipping an event already handled", { event_id: event.id, topic });
              else afterCommit(event);
              return;
            } catch (err) {
              const error = err as Error;
              span.recordException(error);
              if (error instanceof PoisonMessageError) {
                // The handler found the payload unreadable: no retry can change that.
                log.warn("dead-lettering an event its handler cannot read", {
                  event_id: event.id,
                  topic,
                  partition,
                  offset: message.offset,
                  reason: error.reason,
                });
                span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
                await deadLetter(topic, partition, message, "invalid", error.reason, attempt);
                return;
              }
              if (classify(error) === "transient") {
                transientInARow++;
                const ms = transientBackoffMs(transientInARow);
                // The first few at warn, then quieter: an outage would otherwise flood the logs.
                const level = transientInARow <= 3 || transientInARow % 20 === 0 ? "warn" : "debug";
                log[level]("transient failure; retrying without a limit", {
                  event_id: event.id,
                  topic,
                  partition,
                  offset: message.offset,
                  retry: transientInARow,
                  backoff_ms: ms,
                  error,
                });
                await wait(ms, heartbeat);
                continue;
              }
              transientInARow = 0;
              failures++;
              if (failures >= maxAttempts) {
                if (!(await databaseAnswers())) {
                  // The event is not at fault: dead-lettering it would turn an outage into lost
                  // work. Throwing leaves the offset where it is and kafkajs delivers it again.
                  log.warn("database unavailable; leaving the event for redelivery", {
                    event_id: event.id,
                    topic,
                    error,
                  });
                  throw error;
                }
                log.error("event failed every attempt; dead-lettering it", {
                  event_id: event.id,
                  type: event.type,
                  topic,
                  partition,
                  offset: message.offset,
                  attempts: attempt,
                  error,
                });
                span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
                await deadLetter(topic, partition, message, "failed", error.message ?? String(err), attempt);
                return;
              }
              log.warn("event handler failed; retrying", { event_id: event.id, topic, attempt, failures, error });
              await wait(backoffMs(failures), heartbeat);
            }
          }
        } finally {
          span.end();
        }
      },
    );
  }

  try {
    await consumer.connect();
    await consumer.subscribe({ topics: opts.topics, fromBeginning: opts.fromBeginning ?? true });
    await consumer.run({
      partitionsConsumedConcurrently: opts.partitionsConsumedConcurrently ?? 1,
      ...(batchSize > 1
        ? { eachBatchAutoResolve: false, eachBatch: handleBatch }
        : {
            eachMessage: ({ topic, partition, message, heartbeat }) =>
              handleMessage(topic, partition, message, heartbeat),
          }),
    });
  } catch (err) {
    await consumer.disconnect().catch(() => undefined);
    await dlq.disconnect().catch(() => undefined);
    throw err;
  }

  let stopped: Promise<void> | undefined;
  return {
    running: () => alive && !stopped,
    stop() {
      // kafkajs' disconnect waits for the message in hand, commits resolved offsets and leaves the group.
      stopped ??= (async () => {
        stopping.abort();
        await consumer.disconnect();
        await dlq.disconnect();
      })();
      return stopped;
    },
  };
}

/**
 * Runs one attempt while telling the group coordinator, every second, that this member is alive:
 * kafkajs only heartbeats between messages, so an attempt longer than the session timeout (a big
 * document's analysis) would otherwise get the member evicted mid-message. heartbeat() only sends
 * once its interval has passed, so calling it often is cheap. A failed heartbeat (a rebalance
 * started) is not acted on here: the work in hand cannot be abandoned half-way, and the offset
 * commit that follows fails, so the next owner gets the message again, and the inbox absorbs it.
 */
async function whileHeartbeating<T>(heartbeat: () => Promise<void>, work: () => Promise<T>): Promise<T> {
  const timer = setInterval(() => void heartbeat().catch(() => undefined), 1_000);
  try {
    return await work();
  } finally {
    clearInterval(timer);
  }
}
