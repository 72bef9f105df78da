import type { IHeaders, Kafka, KafkaMessage } from "kafkajs";
import { DlqHeaders } from "./consumer.js";

export interface ReplayOptions {
  kafka: Kafka;
  /** The dead-letter topic to read. */
  dlqTopic: string;
  /**
   * The replay's own consumer group: where it resumes from, so a dead letter is replayed once.
   * Default `<dlqTopic>.replay`.
   */
  groupId?: string;
  /** List what would be replayed; publish nothing and commit nothing. */
  dryRun?: boolean;
  /** Replay at most this many dead letters (the rest wait for the next run). */
  limit?: number;
  /** Stop waiting for messages after this long without one (another member holds partitions). Default 10 s. */
  idleTimeoutMs?: number;
  /** Told about each dead letter as it is handled. */
  onMessage?: (m: ReplayedMessage) => void;
}

export interface ReplayedMessage {
  partition: number;
  offset: string;
  key: string | undefined;
  eventId: string | undefined;
  /** Where it is (or would be) republished; undefined when the dead letter does not say. */
  topic: string | undefined;
  reason: string | undefined;
  error: string | undefined;
  outcome: "replayed" | "would replay" | "skipped: no dlq_original_topic";
}

export interface ReplayReport {
  replayed: number;
  skipped: number;
  /** Dead letters that were there when the run started and were left for later (limit, idle). */
  left: number;
}

const header = (headers: IHeaders | undefined, name: string): string | undefined => {
  const v = headers?.[name];
  if (v === undefined) return undefined;
  return (Array.isArray(v) ? v[0] : v)?.toString();
};

/** The message's own headers, as its producer wrote them: every `dlq_` header the consumer added goes. */
export function originalHeaders(headers: IHeaders | undefined): IHeaders {
  const out: IHeaders = {};
  for (const [k, v] of Object.entries(headers ?? {})) {
    if (k.startsWith("dlq_") || v === undefined) continue;
    out[k] = v;
  }
  return out;
}

/**
 * Republishes dead letters to the topic they came from (`dlq_original_topic`), each with its
 * original key, value and headers, so the consumer that failed on it handles it again. Groups
 * that already handled the event drop it in their inbox (same `ce_id`).
 *
 * It reads what the dead-letter topic held when it started, from the replay group's committed
 * position (the beginning the first time), and commits each dead letter once it is republished:
 * a second run, or a run after a crash, does not replay it again. A dead letter that fails again
 * comes back to the dead-letter topic as a new message, after this run's end, for a later run.
 */
export async function replayDeadLetters(opts: ReplayOptions): Promise<ReplayReport> {
  const { kafka, dlqTopic } = opts;
  const groupId = opts.groupId ?? `${dlqTopic}.replay`;
  const limit = opts.limit ?? Infinity;
  const idleTimeoutMs = opts.idleTimeoutMs ?? 10_000;

  // Where each partition ends now, and where this group left off: the run's work, fixed up front
  // so a dead letter that arrives meanwhile (or fails again) waits for the next run.
  const admin = kafka.admin();
  await admin.connect();
  const ends = new Map<number, bigint>();
  const starts = new Map<number, bigint>();
  try {
    const [offsets, committed] = await Promise.all([
      admin.fetchTopicOffsets(dlqTopic),
      admin.fetchOffsets({ groupId, topics: [dlqTopic] }),
    ]);
    const done = new Map(committed[0]?.partitions.map((p) => [p.partition, BigInt(p.offset)]) ?? []);
    for (const p of offsets) {
      const low = BigInt(p.low);
      const from = done.get(p.partition) ?? -1n;
      starts.set(p.partition, from >= low ? from : low);
      ends.set(p.partition, BigInt(p.high));
    }
  } finally {
    await admin.disconnect();
  }
  const pending = new Set([...ends].filter(([p, end]) => starts.get(p)! < end).map(([p]) => p));
  const total = [...pending].reduce((n, p) => n + Number(ends.get(p)! - starts.get(p)!), 0);
  const report: ReplayReport = { replayed: 0, skipped: 0, left: total };
  if (pending.size === 0 || limit <= 0) return report;

  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  const consumer = kafka.consumer({ groupId, maxWaitTimeInMs: 250 });
  let finish!: () => void;
  const finished = new Promise<void>((r) => (finish = r));
  let idle: NodeJS.Timeout | undefined;
  const touch = () => {
    clearTimeout(idle);
    idle = setTimeout(finish, idleTimeoutMs);
  };
  let failure: unknown;

  async function replay(partition: number, message: KafkaMessage): Promise<void> {
    const offset = BigInt(message.offset);
    if (!pending.has(partition) || offset >= ends.get(partition)! || report.replayed + report.skipped >= limit) return;
    const topic = header(message.headers, DlqHeaders.topic);
    const seen: ReplayedMessage = {
      partition,
      offset: message.offset,
      key: message.key?.toString(),
      eventId: header(message.headers, "ce_id"),
      topic,
      reason: header(message.headers, DlqHeaders.reason),
      error: header(message.headers, DlqHeaders.error),
      outcome: !topic ? "skipped: no dlq_original_topic" : opts.dryRun ? "would replay" : "replayed",
    };
    if (topic && !opts.dryRun) {
      await producer.send({
        topic,
        acks: -1,
        messages: [{ key: message.key, value: message.value, headers: originalHeaders(message.headers) }],
      });
    }
    // Committed only once the copy is acknowledged: a crash in between replays it again, which
    // the consumers' inboxes absorb; the other way round could lose it.
    if (!opts.dryRun) await consumer.commitOffsets([{ topic: dlqTopic, partition, offset: (offset + 1n).toString() }]);
    if (topic) report.replayed++;
    else report.skipped++;
    report.left--;
    opts.onMessage?.(seen);
    if (offset + 1n >= ends.get(partition)!) pending.delete(partition);
    if (pending.size === 0 || report.replayed + report.skipped >= limit) finish();
  }

  try {
    await producer.connect();
    await consumer.connect();
    await consumer.subscribe({ topics: [dlqTopic], fromBeginning: true });
    touch();
    await consumer.run({
      autoCommit: false,
      eachMessage: async ({ partition, message }) => {
        touch();
        // After a failure nothing more is committed: a later offset would hide the failed one.
        if (failure) return;
        try {
          await replay(partition, message);
        } catch (err) {
          // Stop at the first failure: what was not committed is replayed by the next run.
          failure ??= err;
          finish();
        }
      },
    });
    await finished;
  } finally {
    clearTimeout(idle);
    await consumer.disconnect().catch(() => undefined);
    await producer.disconnect().catch(() => undefined);
  }
  if (failure) throw failure;
  return report;
}
