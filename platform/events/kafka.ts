import { Kafka, logLevel as KafkaLogLevel, type KafkaConfig, type LogEntry, type logCreator } from "kafkajs";
import { logger as rootLogger, type Logger } from "../telemetry/logger.js";

/**
 * kafkajs log entries as the mesh's JSON lines, so broker trouble shows up next to the
 * service's own logs with the same trace ids. kafkajs' own level filter still applies first.
 */
function kafkaLogCreator(base: Logger = rootLogger): logCreator {
  const log = base.child({ component: "kafkajs" });
  return () =>
    ({ namespace, level, log: entry }: LogEntry) => {
      const { message, timestamp: _timestamp, ...fields } = entry;
      const f = namespace ? { namespace, ...fields } : fields;
      if (level === KafkaLogLevel.ERROR) log.error(message, f);
      else if (level === KafkaLogLevel.WARN && !expectedNotices.some((n) => message.startsWith(n)))
        log.warn(message, f);
      else if (level === KafkaLogLevel.INFO) log.info(message, f);
      else log.debug(message, f);
    };
}

/**
 * kafkajs warns on every producer about two choices the mesh makes on purpose: the default
 * partitioner (the Java client's murmur2, which keeps a key on the partition other clients pick)
 * and bounded retries on idempotent producers (a publish that cannot get through must fail back
 * to its caller rather than hang a stop). They go to debug, so a warning in the log means trouble.
 */
const expectedNotices = ["KafkaJS v2.0.0 switched default partitioner", "Limiting retries for the idempotent producer"];

export interface KafkaClientOptions {
  /** host:port list; KAFKA_BROKERS split on commas in production, the embedded broker's address otherwise. */
  brokers: string[];
  clientId: string;
  logger?: Logger;
  logLevel?: KafkaLogLevel;
  /** Anything else kafkajs accepts (retry, timeouts, ssl, sasl). */
  config?: Omit<KafkaConfig, "brokers" | "clientId" | "logCreator" | "logLevel">;
}

/** A kafkajs client logging through the mesh's logger; what services pass to the relay and consumer. */
export function createKafka(opts: KafkaClientOptions): Kafka {
  return new Kafka({
    ...opts.config,
    brokers: opts.brokers,
    clientId: opts.clientId,
    logLevel: opts.logLevel ?? KafkaLogLevel.WARN,
    logCreator: kafkaLogCreator(opts.logger),
  });
}

/**
 * Creates the topics that do not exist yet. Partition count is always explicit: kafkajs sends -1
 * when it is omitted, which brokers before CreateTopics v4 (the embedded one included) refuse.
 */
export async function ensureTopics(kafka: Kafka, topics: { topic: string; numPartitions: number }[]): Promise<void> {
  if (topics.length === 0) return;
  const admin = kafka.admin();
  await admin.connect();
  try {
    const existing = new Set(await admin.listTopics());
    const missing = topics.filter((t) => !existing.has(t.topic));
    if (missing.length > 0) {
      await admin.createTopics({ topics: missing.map((t) => ({ ...t, replicationFactor: -1 })), waitForLeaders: true });
    }
  } finally {
    await admin.disconnect();
  }
}

/** Partition count of each topic that exists (absent from the map otherwise). */
export async function topicPartitions(kafka: Kafka, topics: string[]): Promise<Map<string, number>> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    const existing = new Set(await admin.listTopics());
    const known = topics.filter((t) => existing.has(t));
    const out = new Map<string, number>();
    if (known.length === 0) return out;
    const meta = await admin.fetchTopicMetadata({ topics: known });
    for (const t of meta.topics) out.set(t.name, t.partitions.length);
    return out;
  } finally {
    await admin.disconnect();
  }
}
