import { ErrorCode } from "./protocol/errors.js";
import { TopicRegistry, topicNameProblem, type Topic } from "./log/topic-registry.js";
import { OffsetStore } from "./groups/offset-store.js";
import { GroupCoordinator } from "./groups/coordinator.js";
import type { RetentionPolicy } from "./log/partition-log.js";
import type { Logger } from "./logger.js";

export interface BrokerSettings {
  nodeId: number;
  clusterId: string;
  dataDir: string | null;
  autoCreateTopics: boolean;
  defaultPartitions: number;
  maxFrameBytes: number;
  maxMessageBytes: number;
  retention: RetentionPolicy;
  groupMinSessionTimeoutMs: number;
  groupMaxSessionTimeoutMs: number;
  groupInitialRebalanceDelayMs: number;
}

export interface NodeAddress {
  nodeId: number;
  host: string;
  port: number;
}

/** The broker's state that every API works on: topics and their logs, groups, committed offsets. */
export class Broker {
  readonly topics: TopicRegistry;
  readonly offsets: OffsetStore;
  readonly groups: GroupCoordinator;
  /** Set once the listener knows its port; this is what Metadata and FindCoordinator advertise. */
  node: NodeAddress;
  private lastProducerId = 0;

  constructor(
    readonly settings: BrokerSettings,
    readonly logger: Logger,
  ) {
    this.topics = new TopicRegistry(settings.dataDir, settings.retention, logger);
    this.offsets = new OffsetStore(settings.dataDir);
    this.groups = new GroupCoordinator(
      {
        minSessionTimeoutMs: settings.groupMinSessionTimeoutMs,
        maxSessionTimeoutMs: settings.groupMaxSessionTimeoutMs,
        initialRebalanceDelayMs: settings.groupInitialRebalanceDelayMs,
      },
      logger,
    );
    this.node = { nodeId: settings.nodeId, host: "", port: -1 };
  }

  get clusterId(): string {
    return this.settings.clusterId;
  }

  load(): void {
    this.topics.load();
    this.offsets.load();
    // Producer ids must not repeat across restarts, or a new producer would inherit old sequences.
    this.lastProducerId = Math.max(this.topics.maxProducerId(), Date.now());
  }

  nextProducerId(): number {
    return ++this.lastProducerId;
  }

  /** Looks a topic up, creating it when auto-creation is on and the request allows it. */
  ensureTopic(name: string, allowCreate: boolean): { topic?: Topic; error: number } {
    const existing = this.topics.get(name);
    if (existing) return { topic: existing, error: ErrorCode.NONE };
    if (topicNameProblem(name)) return { error: ErrorCode.INVALID_TOPIC_EXCEPTION };
    if (!this.settings.autoCreateTopics || !allowCreate) return { error: ErrorCode.UNKNOWN_TOPIC_OR_PARTITION };
    this.logger.info("auto-creating topic", { topic: name, partitions: this.settings.defaultPartitions });
    return { topic: this.topics.create(name, this.settings.defaultPartitions), error: ErrorCode.NONE };
  }

  applyRetention(now = Date.now()): number {
    return this.topics.applyRetention(now);
  }

  close(): void {
    this.groups.close();
    this.topics.close();
    this.offsets.close();
  }
}
