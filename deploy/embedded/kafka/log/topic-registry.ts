import fs from "node:fs";
import path from "node:path";
import { ProducerStateTable } from "../producers/producer-state.js";
import { PartitionLog, syncDir, type RetentionPolicy } from "./partition-log.js";
import type { Logger } from "../logger.js";

export interface Partition {
  readonly topic: string;
  readonly index: number;
  readonly log: PartitionLog;
  readonly producers: ProducerStateTable;
}

export interface Topic {
  readonly name: string;
  readonly partitions: Partition[];
  readonly configs: Record<string, string>;
}

interface TopicFile {
  name: string;
  partitions: number;
  configs: Record<string, string>;
}

const LEGAL_TOPIC = /^[a-zA-Z0-9._-]+$/;

/** Kafka's rules for topic names; returns a reason when the name is not allowed. */
export function topicNameProblem(name: string): string | null {
  if (name.length === 0) return "topic name is empty";
  if (name === "." || name === "..") return "topic name cannot be '.' or '..'";
  if (name.length > 249) return "topic name is longer than 249 characters";
  if (!LEGAL_TOPIC.test(name)) return "topic name may only contain ASCII letters, digits, '.', '_' and '-'";
  return null;
}

/** Topic configs the broker acts on; everything else is stored and reported back but ignored. */
function policyFor(defaults: RetentionPolicy, configs: Record<string, string>): RetentionPolicy {
  const num = (key: string, fallback: number): number => {
    const v = configs[key];
    if (v === undefined) return fallback;
    const n = Number(v);
    return Number.isFinite(n) ? n : fallback;
  };
  return {
    retentionMs: num("retention.ms", defaults.retentionMs),
    retentionBytes: num("retention.bytes", defaults.retentionBytes),
    segmentBytes: num("segment.bytes", defaults.segmentBytes),
    segmentMs: num("segment.ms", defaults.segmentMs),
  };
}

export const SUPPORTED_TOPIC_CONFIGS = new Set([
  "retention.ms",
  "retention.bytes",
  "segment.bytes",
  "segment.ms",
  "cleanup.policy",
  "min.insync.replicas",
  "max.message.bytes",
  "message.timestamp.type",
  "compression.type",
]);

export class TopicRegistry {
  private topics = new Map<string, Topic>();
  private readonly topicsDir: string | null;

  constructor(
    dataDir: string | null,
    private readonly defaults: RetentionPolicy,
    private readonly logger: Logger,
  ) {
    this.topicsDir = dataDir ? path.join(dataDir, "topics") : null;
  }

  /** Replays every topic on disk; a topic whose metadata file is unreadable is skipped loudly. */
  load(): void {
    if (!this.topicsDir) return;
    fs.mkdirSync(this.topicsDir, { recursive: true });
    for (const dirName of fs.readdirSync(this.topicsDir)) {
      const metaFile = path.join(this.topicsDir, dirName, "topic.json");
      let meta: TopicFile;
      try {
        meta = JSON.parse(fs.readFileSync(metaFile, "utf8")) as TopicFile;
      } catch (err) {
        // A directory without metadata is a topic whose creation or deletion was interrupted.
        this.logger.warn("skipping topic directory without metadata", { dir: dirName, error: String(err) });
        fs.rmSync(path.join(this.topicsDir, dirName), { recursive: true, force: true });
        continue;
      }
      const policy = policyFor(this.defaults, meta.configs);
      const partitions: Partition[] = [];
      for (let p = 0; p < meta.partitions; p++) {
        const producers = new ProducerStateTable();
        const { log, truncatedBytes } = PartitionLog.open(
          meta.name,
          p,
          path.join(this.topicsDir, dirName, String(p)),
          policy,
          (h) => producers.record(h, h.baseOffset),
        );
        if (truncatedBytes > 0) {
          this.logger.warn("cut torn tail of partition log", { topic: meta.name, partition: p, bytes: truncatedBytes });
        }
        partitions.push({ topic: meta.name, index: p, log, producers });
      }
      this.topics.set(meta.name, { name: meta.name, partitions, configs: meta.configs });
    }
  }

  get(name: string): Topic | undefined {
    return this.topics.get(name);
  }

  partition(topic: string, index: number): Partition | undefined {
    return this.topics.get(topic)?.partitions[index];
  }

  list(): Topic[] {
    return [...this.topics.values()];
  }

  create(name: string, numPartitions: number, configs: Record<string, string> = {}): Topic {
    const policy = policyFor(this.defaults, configs);
    const partitions: Partition[] = [];
    if (this.topicsDir) {
      const dir = path.join(this.topicsDir, name);
      fs.mkdirSync(dir, { recursive: true });
      for (let p = 0; p < numPartitions; p++) {
        const { log } = PartitionLog.open(name, p, path.join(dir, String(p)), policy, () => {});
        syncDir(path.join(dir, String(p)));
        partitions.push({ topic: name, index: p, log, producers: new ProducerStateTable() });
      }
      // Metadata last, atomically: a crash before this leaves a directory load() discards.
      const meta: TopicFile = { name, partitions: numPartitions, configs };
      const tmp = path.join(dir, "topic.json.tmp");
      fs.writeFileSync(tmp, JSON.stringify(meta));
      const fd = fs.openSync(tmp, "r+");
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      fs.renameSync(tmp, path.join(dir, "topic.json"));
      syncDir(dir);
      syncDir(this.topicsDir);
    } else {
      for (let p = 0; p < numPartitions; p++) {
        partitions.push({
          topic: name,
          index: p,
          log: PartitionLog.inMemory(name, p, policy),
          producers: new ProducerStateTable(),
        });
      }
    }
    const topic: Topic = { name, partitions, configs };
    this.topics.set(name, topic);
    return topic;
  }

  delete(name: string): boolean {
    const topic = this.topics.get(name);
    if (!topic) return false;
    this.topics.delete(name);
    if (this.topicsDir) {
      const dir = path.join(this.topicsDir, name);
      // Metadata goes first so a crash mid-delete cannot resurrect a half-deleted topic.
      fs.rmSync(path.join(dir, "topic.json"), { force: true });
      syncDir(dir);
    }
    for (const p of topic.partitions) p.log.destroy();
    if (this.topicsDir) fs.rmSync(path.join(this.topicsDir, name), { recursive: true, force: true });
    return true;
  }

  applyRetention(now: number): number {
    let freed = 0;
    for (const t of this.topics.values()) for (const p of t.partitions) freed += p.log.applyRetention(now);
    return freed;
  }

  maxProducerId(): number {
    let max = -1;
    for (const t of this.topics.values())
      for (const p of t.partitions) max = Math.max(max, p.producers.maxProducerId());
    return max;
  }

  close(): void {
    for (const t of this.topics.values()) for (const p of t.partitions) p.log.close();
  }
}
