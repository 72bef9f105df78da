import { context } from "@opentelemetry/api";
import { suppressTracing } from "@opentelemetry/core";
import type { Kysely } from "kysely";
import { env } from "../config/env.js";
import { logger as rootLogger, type Logger } from "../telemetry/logger.js";
import type { InboxDatabase } from "./consumer.js";
import type { OutboxDatabase } from "./outbox.js";

const HOUR_MS = 3_600_000;

/** For the config spec of a service with an outbox. */
export const outboxRetentionSpec = {
  OUTBOX_RETENTION_HOURS: env.int("how long outbox rows are kept after they were published", 168, 1, 87_600),
};

/** For the config spec of a service that consumes through the inbox. */
export const inboxRetentionSpec = {
  INBOX_RETENTION_HOURS: env.int(
    "how long the inbox remembers a handled event; a redelivery after that is handled again",
    336,
    1,
    87_600,
  ),
};

export interface PruneOptions {
  /** Rows deleted per statement. Default 1000. */
  batchSize?: number;
  /** Stops between batches; rows not reached are left for the next run. */
  signal?: AbortSignal;
}

/**
 * Deletes outbox rows published before `before`; returns how many. Unsent rows are never touched,
 * however old: they are events still owed to Kafka. Each batch is one statement on its own, so no
 * transaction outlives a batch and other queries get the database between batches.
 */
export async function pruneOutbox(db: Kysely<any>, before: Date, opts: PruneOptions = {}): Promise<number> {
  const outbox = db as Kysely<OutboxDatabase>;
  return inBatches(opts, (limit) =>
    outbox
      .deleteFrom("outbox")
      .where("id", "in", (eb) =>
        eb.selectFrom("outbox").select("id").where("sent_at", "<", before).orderBy("seq").limit(limit),
      )
      .executeTakeFirst(),
  );
}

/**
 * Deletes inbox rows recorded before `before`; returns how many. After that a redelivery of one of
 * those events would be handled again, so keep them longer than any redelivery can take (days).
 * Batched like pruneOutbox.
 */
export async function pruneInbox(db: Kysely<any>, before: Date, opts: PruneOptions = {}): Promise<number> {
  const inbox = db as Kysely<InboxDatabase>;
  return inBatches(opts, (limit) =>
    inbox
      .deleteFrom("inbox")
      .where(({ eb, refTuple, selectFrom }) =>
        eb(
          refTuple("group_id", "event_id"),
          "in",
          selectFrom("inbox")
            .select(["group_id", "event_id"])
            .where("processed_at", "<", before)
            .orderBy("processed_at")
            .limit(limit)
            .$asTuple("group_id", "event_id"),
        ),
      )
      .executeTakeFirst(),
  );
}

async function inBatches(
  opts: PruneOptions,
  deleteBatch: (limit: number) => Promise<{ numDeletedRows: bigint }>,
): Promise<number> {
  const batchSize = opts.batchSize ?? 1000;
  let total = 0;
  while (!opts.signal?.aborted) {
    const deleted = Number((await deleteBatch(batchSize)).numDeletedRows);
    total += deleted;
    if (deleted < batchSize) break;
    // Let queued queries in before the next batch (on PGlite they wait for the one session).
    await new Promise((r) => setImmediate(r));
  }
  return total;
}

export interface EventPruningOptions {
  /** The service's schema-scoped database. */
  db: Kysely<any>;
  /** Prune the outbox, keeping published rows this long. Leave out for a service without one. */
  outboxRetentionMs?: number;
  /** Prune the inbox, keeping rows this long. Leave out for a service that does not consume. */
  inboxRetentionMs?: number;
  /** Time between runs. Default one hour. */
  intervalMs?: number;
  /** Delay of the first run: not on the start-up path. Default one minute. */
  firstRunDelayMs?: number;
  batchSize?: number;
  logger?: Logger;
}

export interface EventPruning {
  /** Runs now (or joins the run in progress); resolves with the rows deleted. */
  runOnce(): Promise<{ outbox: number; inbox: number }>;
  /** Cancels the schedule and ends a run in progress after its current batch. */
  stop(): Promise<void>;
}

/** Starts pruning the outbox and/or inbox on a schedule, from a service's retention settings. */
export function startEventPruning(opts: EventPruningOptions): EventPruning {
  const intervalMs = opts.intervalMs ?? HOUR_MS;
  const log = (opts.logger ?? rootLogger).child({ component: "event-pruning" });
  const abort = new AbortController();
  let running: Promise<{ outbox: number; inbox: number }> | undefined;
  let timer: NodeJS.Timeout | undefined;

  async function run(): Promise<{ outbox: number; inbox: number }> {
    const prune = { batchSize: opts.batchSize, signal: abort.signal };
    const now = Date.now();
    // A span per delete every hour would only be noise in the traces.
    return context.with(suppressTracing(context.active()), async () => {
      const outbox =
        opts.outboxRetentionMs === undefined
          ? 0
          : await pruneOutbox(opts.db, new Date(now - opts.outboxRetentionMs), prune);
      const inbox =
        opts.inboxRetentionMs === undefined
          ? 0
          : await pruneInbox(opts.db, new Date(now - opts.inboxRetentionMs), prune);
      if (outbox + inbox > 0) log.info("pruned events past their retention", { outbox, inbox });
      return { outbox, inbox };
    });
  }

  function runOnce() {
    running ??= run().finally(() => (running = undefined));
    return running;
  }

  function schedule(ms: number) {
    if (abort.signal.aborted) return;
    timer = setTimeout(() => {
      runOnce()
        .catch((err: unknown) => log.warn("pruning failed; trying again at the next run", { error: err as Error }))
        .finally(() => schedule(intervalMs));
    }, ms);
    // The schedule alone must not keep a process alive.
    timer.unref();
  }
  schedule(opts.firstRunDelayMs ?? Math.min(intervalMs, 60_000));

  return {
    runOnce,
    async stop() {
      abort.abort();
      clearTimeout(timer);
      await running?.catch(() => undefined);
    },
  };
}
