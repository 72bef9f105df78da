import type { Consumer, Kafka, KafkaMessage, Producer } from "kafkajs";
import {
  classifyFailure,
  DlqHeaders,
  ensureTopics,
  fromKafkaMessage,
  fullJitterBackoff,
  PoisonMessageError,
} from "../../platform/events/index.js";
import { logger as rootLogger, type Logger } from "../../platform/telemetry/logger.js";
import { DEVICE_EVENT, deviceEventId } from "./ingest.js";
import { decodeRecorded } from "./record-codec.js";
import type { ApplyEvent, DeviceStore } from "./store.js";

export interface WorkerOptions {
  kafka: Kafka;
  store: DeviceStore;
  topic: string;
  dlqTopic: string;
  groupId: string;
  /** Called with the devices whose history grew, once their batch committed. */
  applied: (devices: string[]) => void;
  /** Events written per statement at most. */
  chunk?: number;
  /** Permanent failures of one event before it is dead-lettered. */
  maxAttempts?: number;
  retryBaseMs?: number;
  retryMaxMs?: number;
  partitionsConsumedConcurrently?: number;
  sessionTimeoutMs?: number;
  logger?: Logger;
}

export interface Worker {
  stop(): Promise<void>;
  running(): boolean;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

class StoppingError extends Error {
  constructor() {
    super("the worker is stopping; the batch is left for redelivery");
  }
}

/** Reads a consumed message as a device event, or says why it never can be one. */
export function readDeviceEvent(m: KafkaMessage): ApplyEvent {
  const envelope = fromKafkaMessage(m);
  if (envelope.type !== DEVICE_EVENT.type)
    throw new PoisonMessageError(`ce_type "${envelope.type.slice(0, 100)}" is not ${DEVICE_EVENT.type}`);
  let e;
  try {
    e = decodeRecorded(envelope.payload);
  } catch (err) {
    throw new PoisonMessageError(`the value is not a DeviceEventRecorded: ${(err as Error).message}`);
  }
  if (!UUID.test(e.deviceId)) throw new PoisonMessageError("device_id is not a lower-case UUID");
  if (envelope.key !== e.deviceId) throw new PoisonMessageError("the message key is not the event's device_id");
  if (e.sequence < 1n || e.sequence > BigInt(Number.MAX_SAFE_INTEGER))
    throw new PoisonMessageError(`sequence ${e.sequence} is out of range`);
  if (envelope.id !== deviceEventId(e.deviceId, e.sequence))
    throw new PoisonMessageError(`ce_id "${envelope.id.slice(0, 100)}" is not <device_id>/<sequence>`);
  if (!e.eventTime) throw new PoisonMessageError("event_time is missing");
  // As timestampDate reckons it.
  const eventTime = new Date(Number(e.eventTime.seconds) * 1000 + Math.round(e.eventTime.nanos / 1_000_000));
  if (Number.isNaN(eventTime.getTime())) throw new PoisonMessageError("event_time is not a valid time");
  if (e.clientId.length === 0 || e.clientId.length > 64)
    throw new PoisonMessageError("client_id must be 1 to 64 characters");
  for (const k in e.readings)
    if (!Number.isFinite(e.readings[k]))
      throw new PoisonMessageError(`reading "${k.slice(0, 64)}" is not a finite number`);
  return { deviceId: e.deviceId, sequence: e.sequence, clientId: e.clientId, eventTime, readings: { ...e.readings } };
}

/**
 * The consumer group that applies device events: per partition batch, the poison messages go to
 * the dead-letter topic with their reason, and the rest are applied a chunk per statement
 * (history, state and the inbox role of the history's key, in one transaction). Offsets are
 * committed only after the chunk they cover committed in Postgres, so a worker killed at any
 * point redelivers at most what it had not committed, and the history's key makes that a no-op.
 *
 * Transient failures (Postgres unreachable) retry the same chunk without a limit, in order, while
 * heartbeating: the events wait in Kafka. A chunk failing otherwise is retried event by event so
 * that only the event at fault is dead-lettered, after `maxAttempts`.
 */
export async function startWorker(opts: WorkerOptions): Promise<Worker> {
  const log = (opts.logger ?? rootLogger).child({ component: "device-worker", group: opts.groupId });
  const chunk = opts.chunk ?? 1_000;
  const maxAttempts = opts.maxAttempts ?? 3;
  const transientBackoff = fullJitterBackoff(opts.retryBaseMs ?? 500, opts.retryMaxMs ?? 30_000);
  const permanentBackoff = (n: number) => (opts.retryBaseMs ?? 500) * 2 ** n;
  const stopping = new AbortController();
  await ensureTopics(opts.kafka, [{ topic: opts.dlqTopic, numPartitions: 3 }]);
  const dlq: Producer = opts.kafka.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    retry: { retries: 5, initialRetryTime: 300, maxRetryTime: 5_000 },
  });
  await dlq.connect();
  const consumer: Consumer = opts.kafka.consumer({
    groupId: opts.groupId,
    // As the platform consumer: stop() waits for the fetch in flight, so it must not be 5 s long.
    maxWaitTimeInMs: 1_000,
    sessionTimeout: opts.sessionTimeoutMs ?? 10_000,
    heartbeatInterval: 1_000,
  });
  let alive = true;
  consumer.on(consumer.events.CRASH, (e) => {
    log.error("device worker crashed", { error: e.payload.error, restart: e.payload.restart });
    if (!e.payload.restart) alive = false;
  });

  async function deadLetter(partition: number, m: KafkaMessage, reason: string, error: string, attempts: number) {
    await dlq.send({
      topic: opts.dlqTopic,
      acks: -1,
      messages: [
        {
          key: m.key,
          value: m.value,
          headers: {
            ...m.headers,
            [DlqHeaders.reason]: reason,
            [DlqHeaders.error]: error.slice(0, 2000),
            [DlqHeaders.attempts]: String(attempts),
            [DlqHeaders.topic]: opts.topic,
            [DlqHeaders.partition]: String(partition),
            [DlqHeaders.offset]: m.offset,
            [DlqHeaders.group]: opts.groupId,
            [DlqHeaders.failedAt]: new Date().toISOString(),
          },
        },
      ],
    });
  }

  async function wait(ms: number, heartbeat: () => Promise<void>) {
    const until = Date.now() + ms;
    for (;;) {
      if (stopping.signal.aborted) throw new StoppingError();
      const left = until - Date.now();
      if (left <= 0) return;
      await new Promise((r) => setTimeout(r, Math.min(left, 500)));
      await heartbeat().catch(() => undefined);
    }
  }

  /** Applies events, retrying transient failures for as long as they last; throws a permanent one. */
  async function applyRetrying(events: ApplyEvent[], heartbeat: () => Promise<void>) {
    for (let retry = 1; ; retry++) {
      try {
        const done = await opts.store.applyBatch(events);
        if (done.devices.length > 0) opts.applied(done.devices);
        return;
      } catch (err) {
        if (classifyFailure(err) !== "transient") throw err;
        const ms = transientBackoff(retry);
        if (retry <= 3 || retry % 20 === 0)
          log.warn("applying device events failed for now; retrying", {
            events: events.length,
            retry,
            error: err as Error,
          });
        await wait(ms, heartbeat);
      }
    }
  }

  try {
    await consumer.connect();
    await consumer.subscribe({ topics: [opts.topic], fromBeginning: true });
    await consumer.run({
      partitionsConsumedConcurrently: opts.partitionsConsumedConcurrently ?? 3,
      eachBatchAutoResolve: false,
      eachBatch: async ({ batch, resolveOffset, heartbeat, commitOffsetsIfNecessary, isRunning, isStale }) => {
        let pending: { events: ApplyEvent[]; messages: KafkaMessage[] } = { events: [], messages: [] };
        const flush = async () => {
          if (pending.events.length === 0) return;
          const { events, messages } = pending;
          pending = { events: [], messages: [] };
          try {
            await applyRetrying(events, heartbeat);
          } catch (err) {
            // Something in the chunk fails for good: find out which event, one at a time.
            log.warn("a chunk of device events failed; applying them one by one", { error: err as Error });
            for (let i = 0; i < events.length; i++) {
              for (let failures = 1; ; failures++) {
                try {
                  await applyRetrying([events[i]!], heartbeat);
                  break;
                } catch (one) {
                  if (failures >= maxAttempts) {
                    log.error("device event failed every attempt; dead-lettering it", { error: one as Error });
                    await deadLetter(batch.partition, messages[i]!, "failed", (one as Error).message, failures);
                    break;
                  }
                  await wait(permanentBackoff(failures), heartbeat);
                }
              }
            }
          }
          resolveOffset(messages[messages.length - 1]!.offset);
          await commitOffsetsIfNecessary();
          await heartbeat();
        };
        for (const m of batch.messages) {
          if (!isRunning() || isStale()) break;
          let event: ApplyEvent;
          try {
            event = readDeviceEvent(m);
          } catch (err) {
            if (!(err instanceof PoisonMessageError)) throw err;
            // Whatever was read before it goes first, so offsets only move over handled messages.
            await flush();
            log.warn("dead-lettering an unreadable device event", {
              partition: batch.partition,
              offset: m.offset,
              reason: err.reason,
            });
            await deadLetter(batch.partition, m, "invalid", err.reason, 0);
            resolveOffset(m.offset);
            continue;
          }
          pending.events.push(event);
          pending.messages.push(m);
          if (pending.events.length >= chunk) await flush();
        }
        await flush();
        await commitOffsetsIfNecessary();
      },
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
      stopped ??= (async () => {
        stopping.abort();
        await consumer.disconnect();
        await dlq.disconnect();
      })();
      return stopped;
    },
  };
}
