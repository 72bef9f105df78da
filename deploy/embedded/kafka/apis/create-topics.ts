import { ErrorCode } from "../protocol/errors.js";
import { Writer } from "../protocol/writer.js";
import { SUPPORTED_TOPIC_CONFIGS, topicNameProblem } from "../log/topic-registry.js";
import { defineApi } from "./types.js";

interface TopicSpec {
  name: string;
  numPartitions: number;
  replicationFactor: number;
  assignments: { partition: number; brokers: number[] }[];
  configs: { name: string; value: string | null }[];
}

interface CreateTopicsRequest {
  topics: TopicSpec[];
  timeoutMs: number;
  validateOnly: boolean;
}

/** Guards the broker against a request that would open a million files. */
const MAX_PARTITIONS = 10_000;

export const createTopicsApi = defineApi<CreateTopicsRequest>({
  key: 19,
  name: "CreateTopics",
  minVersion: 0,
  maxVersion: 3,
  decode(r, version) {
    const topics = r.array((r): TopicSpec => ({
      name: r.string(),
      numPartitions: r.int32(),
      replicationFactor: r.int16(),
      assignments: r.array((r) => ({ partition: r.int32(), brokers: r.array((r) => r.int32()) })),
      configs: r.array((r) => ({ name: r.string(), value: r.nullableString() })),
    }));
    const timeoutMs = r.int32();
    const validateOnly = version >= 1 ? r.bool() : false;
    return { topics, timeoutMs, validateOnly };
  },
  handle(req, ctx) {
    const v = ctx.apiVersion;
    const broker = ctx.broker;
    const nodeId = broker.node.nodeId;
    const seen = new Map<string, number>();
    for (const t of req.topics) seen.set(t.name, (seen.get(t.name) ?? 0) + 1);

    const results = req.topics.map((t): { name: string; error: number; message: string | null } => {
      const fail = (error: number, message: string) => ({ name: t.name, error, message });
      const nameProblem = topicNameProblem(t.name);
      if (nameProblem) return fail(ErrorCode.INVALID_TOPIC_EXCEPTION, nameProblem);
      if ((seen.get(t.name) ?? 0) > 1)
        return fail(ErrorCode.INVALID_REQUEST, `topic '${t.name}' appears more than once in the request`);
      if (broker.topics.get(t.name)) return fail(ErrorCode.TOPIC_ALREADY_EXISTS, `topic '${t.name}' already exists`);

      let partitions: number;
      if (t.assignments.length > 0) {
        if (t.numPartitions !== -1 || t.replicationFactor !== -1) {
          return fail(
            ErrorCode.INVALID_REQUEST,
            "numPartitions and replicationFactor must be -1 with a manual replica assignment",
          );
        }
        const indexes = t.assignments.map((a) => a.partition).sort((a, b) => a - b);
        if (indexes.some((p, i) => p !== i))
          return fail(ErrorCode.INVALID_REPLICA_ASSIGNMENT, "partitions must be numbered 0..n-1");
        if (t.assignments.some((a) => a.brokers.length !== 1 || a.brokers[0] !== nodeId)) {
          return fail(
            ErrorCode.INVALID_REPLICA_ASSIGNMENT,
            `this is a single broker (node ${nodeId}): each partition needs exactly [${nodeId}]`,
          );
        }
        partitions = t.assignments.length;
      } else {
        // Versions below 4 predate "-1 means the broker default" (KIP-464): refuse it as those brokers did.
        if (t.numPartitions === -1 && v < 4) {
          return fail(
            ErrorCode.INVALID_PARTITIONS,
            "numPartitions -1 (broker default) needs CreateTopics v4+; give an explicit count",
          );
        }
        if (t.numPartitions <= 0)
          return fail(ErrorCode.INVALID_PARTITIONS, "number of partitions must be larger than 0");
        // -1 is accepted as "1": it is the only factor a single broker can honour.
        if (t.replicationFactor === 0 || t.replicationFactor < -1)
          return fail(ErrorCode.INVALID_REPLICATION_FACTOR, "replication factor must be larger than 0");
        if (t.replicationFactor > 1) {
          return fail(
            ErrorCode.INVALID_REPLICATION_FACTOR,
            `replication factor: ${t.replicationFactor} larger than available brokers: 1`,
          );
        }
        partitions = t.numPartitions;
      }
      if (partitions > MAX_PARTITIONS)
        return fail(ErrorCode.INVALID_PARTITIONS, `at most ${MAX_PARTITIONS} partitions per topic`);
      const configs: Record<string, string> = {};
      for (const c of t.configs) {
        if (!SUPPORTED_TOPIC_CONFIGS.has(c.name))
          return fail(ErrorCode.INVALID_CONFIG, `unsupported topic config '${c.name}'`);
        if (c.value !== null) configs[c.name] = c.value;
      }
      if (configs["cleanup.policy"] !== undefined && configs["cleanup.policy"] !== "delete") {
        return fail(ErrorCode.INVALID_CONFIG, "only cleanup.policy=delete is supported (no log compaction)");
      }
      if (!req.validateOnly) broker.topics.create(t.name, partitions, configs);
      return { name: t.name, error: ErrorCode.NONE, message: null };
    });

    const w = new Writer();
    if (v >= 2) w.int32(0);
    w.array(results, (w, t) => {
      w.string(t.name).int16(t.error);
      if (v >= 1) w.nullableString(t.message);
    });
    return w;
  },
});
