import { Partitioners, type ICustomPartitioner, type Kafka, type Message, type Producer } from "kafkajs";
import { logger as rootLogger, type Logger } from "../../platform/telemetry/logger.js";

export interface PublisherOptions {
  kafka: Kafka;
  topic: string;
  /** Messages per produce request at most. */
  maxBatch?: number;
  /** Longest a send may take before it counts as failed (the producer is then replaced). */
  sendTimeoutMs?: number;
  logger?: Logger;
}

export class SendTimeoutError extends Error {
  constructor(ms: number) {
    super(`Kafka did not acknowledge within ${ms} ms`);
    this.name = "SendTimeoutError";
  }
}

/**
 * kafkajs' default partitioner (the Java client's murmur2 of the key), remembered per key: it
 * hashes every message's key again, and filters the partition list into a new array first. A
 * key given as a Buffer (ingest keeps one per device) is looked up instead. The partition of a
 * key depends only on the key and the partition count, so a remembered answer is the same one.
 */
export const rememberingPartitioner: ICustomPartitioner = () => {
  const choose = Partitioners.DefaultPartitioner();
  const known = new WeakMap<Buffer, { partitions: number; partition: number }>();
  return (args) => {
    const key = args.message.key;
    if (!Buffer.isBuffer(key) || (args.message.partition !== undefined && args.message.partition !== null))
      return choose(args);
    const partitions = args.partitionMetadata.length;
    const seen = known.get(key);
    if (seen !== undefined && seen.partitions === partitions) return seen.partition;
    const partition = choose(args);
    known.set(key, { partitions, partition });
    return partition;
  };
};

/** One message to publish, and the device it belongs to (a failure fails the device's later queued messages too). */
interface Queued {
  deviceId: string;
  message: Message;
  resolve(): void;
  reject(err: Error): void;
}

/**
 * Publishes device events with acks=-1 through one idempotent producer, one produce request at a
 * time: whatever queued while a request was out goes in the next one. That batches naturally
 * under load (more waiting, bigger requests) and keeps a device's events in the order they were
 * accepted, since a request is only sent once the one before it has an answer.
 *
 * A promise resolves only when Kafka acknowledged its message. When a request fails (or times out,
 * when the outcome is unknown) every message in it is rejected, and so are the queued messages of
 * the same devices: they were accepted after the failed ones, and publishing them would put a
 * device's later events in Kafka ahead of the earlier ones it must now resend.
 */
export class EventPublisher {
  private queue: Queued[] = [];
  private producer: Producer | undefined;
  private sending = false;
  private closed = false;
  private readonly maxBatch: number;
  private readonly sendTimeoutMs: number;
  private readonly log: Logger;

  constructor(private readonly opts: PublisherOptions) {
    this.maxBatch = opts.maxBatch ?? 2_000;
    this.sendTimeoutMs = opts.sendTimeoutMs ?? 10_000;
    this.log = (opts.logger ?? rootLogger).child({ component: "device-publisher" });
  }

  publish(deviceId: string, message: Message): Promise<void> {
    if (this.closed) return Promise.reject(new Error("the publisher is closed"));
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ deviceId, message, resolve, reject });
      if (!this.sending) void this.drain();
    });
  }

  private async connected(): Promise<Producer> {
    if (this.producer) return this.producer;
    const p = this.opts.kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      createPartitioner: rememberingPartitioner,
      // Bounded: a broker that is gone must turn into an error the device sees within seconds,
      // never into an acknowledgement, and never into a call that hangs.
      retry: { retries: 3, initialRetryTime: 100, maxRetryTime: 1_000 },
    });
    await p.connect();
    this.producer = p;
    return p;
  }

  private async dropProducer() {
    // A failed idempotent producer may hold sequence numbers the broker no longer agrees with.
    const p = this.producer;
    this.producer = undefined;
    await p?.disconnect().catch(() => undefined);
  }

  private async drain() {
    this.sending = true;
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.maxBatch);
        try {
          const producer = await this.connected();
          let timer: NodeJS.Timeout | undefined;
          const timeout = new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new SendTimeoutError(this.sendTimeoutMs)), this.sendTimeoutMs);
          });
          try {
            await Promise.race([
              producer.send({ topic: this.opts.topic, acks: -1, messages: batch.map((q) => q.message) }),
              timeout,
            ]);
          } finally {
            clearTimeout(timer);
          }
          for (const q of batch) q.resolve();
        } catch (err) {
          const error = err as Error;
          this.log.warn("publishing device events failed; their devices must send them again", {
            events: batch.length,
            error,
          });
          await this.dropProducer();
          const failed = new Set(batch.map((q) => q.deviceId));
          const after = this.queue.filter((q) => failed.has(q.deviceId));
          this.queue = this.queue.filter((q) => !failed.has(q.deviceId));
          for (const q of batch) q.reject(error);
          for (const q of after) q.reject(error);
        }
      }
    } finally {
      this.sending = false;
    }
  }

  async close() {
    this.closed = true;
    while (this.sending) await new Promise((r) => setTimeout(r, 10));
    for (const q of this.queue.splice(0)) q.reject(new Error("the publisher is closed"));
    await this.dropProducer();
  }
}
