import path from "node:path";
import { Broker, type BrokerSettings } from "./broker.js";
import { createLogger, type LogLevel } from "./logger.js";
import { listen } from "./server.js";

export interface BrokerOptions {
  /** Interface to listen on and the host advertised to clients. "localhost" listens on 127.0.0.1 and ::1. Default 127.0.0.1. */
  host?: string;
  /** 0 picks a free port. Default 9092. */
  port?: number;
  /** Host put in Metadata/FindCoordinator answers when it must differ from `host` (e.g. listening on 0.0.0.0). */
  advertisedHost?: string;
  /** Where logs and committed offsets live. Omit (or null) to keep everything in memory. */
  dataDir?: string | null;
  nodeId?: number;
  clusterId?: string;
  /** Create unknown topics on Metadata requests that allow it. Default true. */
  autoCreateTopics?: boolean;
  /** Partitions of auto-created topics. Default 1. */
  defaultPartitions?: number;
  /** Largest request frame accepted; bigger frames close the connection. Default 100 MiB. */
  maxFrameBytes?: number;
  /** Largest record batch accepted per partition. Default 1 MiB + 12 bytes (Kafka's message.max.bytes). */
  maxMessageBytes?: number;
  /** Default topic retention by age. Default 24 h; -1 keeps forever. */
  retentionMs?: number;
  /** Default topic retention by size, per partition. Default 256 MiB; -1 means no limit. */
  retentionBytes?: number;
  /** Segment file size. Default 16 MiB. */
  segmentBytes?: number;
  /** Roll the active segment after this age so time retention can reach it. Default 1 h. */
  segmentMs?: number;
  /** How often retention runs. Default 60 s. */
  retentionCheckIntervalMs?: number;
  groupMinSessionTimeoutMs?: number;
  groupMaxSessionTimeoutMs?: number;
  groupInitialRebalanceDelayMs?: number;
  logLevel?: LogLevel;
}

export interface RunningBroker {
  host: string;
  port: number;
  /** "host:port", exactly as advertised: use it as the kafkajs/librdkafka bootstrap address. */
  address: string;
  /** Deletes expired segments now instead of waiting for the next retention tick; returns bytes freed. */
  applyRetention(now?: number): number;
  stop(): Promise<void>;
}

/** Starts a single-node Kafka-compatible broker in this process. */
export async function startBroker(options: BrokerOptions = {}): Promise<RunningBroker> {
  const host = options.host ?? "127.0.0.1";
  const logger = createLogger(options.logLevel ?? "silent");
  const settings: BrokerSettings = {
    nodeId: options.nodeId ?? 1,
    clusterId: options.clusterId ?? "medmesh-embedded",
    dataDir: options.dataDir ? path.resolve(options.dataDir) : null,
    autoCreateTopics: options.autoCreateTopics ?? true,
    defaultPartitions: options.defaultPartitions ?? 1,
    maxFrameBytes: options.maxFrameBytes ?? 100 * 1024 * 1024,
    maxMessageBytes: options.maxMessageBytes ?? 1024 * 1024 + 12,
    retention: {
      retentionMs: options.retentionMs ?? 24 * 3600_000,
      retentionBytes: options.retentionBytes ?? 256 * 1024 * 1024,
      segmentBytes: options.segmentBytes ?? 16 * 1024 * 1024,
      segmentMs: options.segmentMs ?? 3600_000,
    },
    groupMinSessionTimeoutMs: options.groupMinSessionTimeoutMs ?? 1000,
    groupMaxSessionTimeoutMs: options.groupMaxSessionTimeoutMs ?? 1_800_000,
    groupInitialRebalanceDelayMs: options.groupInitialRebalanceDelayMs ?? 0,
  };
  const broker = new Broker(settings, logger);
  broker.load();
  let listener;
  try {
    listener = await listen(host, options.port ?? 9092, broker, logger);
  } catch (err) {
    broker.close();
    throw err;
  }
  const advertisedHost = options.advertisedHost ?? host;
  broker.node = { nodeId: settings.nodeId, host: advertisedHost, port: listener.port };
  const timer = setInterval(() => {
    try {
      const freed = broker.applyRetention();
      if (freed > 0) logger.info("retention removed segments", { bytes: freed });
    } catch (err) {
      logger.error("retention failed", { error: String(err) });
    }
  }, options.retentionCheckIntervalMs ?? 60_000);
  timer.unref();
  logger.info("broker started", {
    address: `${advertisedHost}:${listener.port}`,
    dataDir: settings.dataDir ?? "memory",
  });

  let stopping: Promise<void> | null = null;
  return {
    host: advertisedHost,
    port: listener.port,
    address: `${advertisedHost}:${listener.port}`,
    applyRetention: (now) => broker.applyRetention(now),
    stop() {
      stopping ??= (async () => {
        clearInterval(timer);
        await listener.close();
        broker.close();
        logger.info("broker stopped");
      })();
      return stopping;
    },
  };
}

export type { LogLevel } from "./logger.js";
