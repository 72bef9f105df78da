import { ErrorCode } from "../protocol/errors.js";
import { isControl, isTransactional, readBatchHeader } from "../protocol/record-batch.js";
import { Writer } from "../protocol/writer.js";
import type { PartitionLog } from "../log/partition-log.js";
import type { Broker } from "../broker.js";
import { defineApi } from "./types.js";

interface ProduceRequest {
  transactionalId: string | null;
  acks: number;
  timeoutMs: number;
  topics: { name: string; partitions: { index: number; records: Buffer | null }[] }[];
}

interface PartitionAnswer {
  index: number;
  error: number;
  baseOffset: number;
  logStartOffset: number;
}

/**
 * Validates and appends one partition's records. Kafka requires exactly one RecordBatch v2 per
 * partition from Produce v3 on, and verifies its CRC before accepting it.
 */
function appendPartition(
  broker: Broker,
  topic: string,
  index: number,
  records: Buffer | null,
  touched: Set<PartitionLog>,
): PartitionAnswer {
  const fail = (error: number): PartitionAnswer => ({ index, error, baseOffset: -1, logStartOffset: -1 });
  const partition = broker.topics.partition(topic, index);
  if (!partition) return fail(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION);
  if (!records || records.length === 0) return fail(ErrorCode.CORRUPT_MESSAGE);
  if (records.length > broker.settings.maxMessageBytes) return fail(ErrorCode.MESSAGE_TOO_LARGE);
  const header = readBatchHeader(records, 0, true);
  if (header === "bad-magic") return fail(ErrorCode.UNSUPPORTED_FOR_MESSAGE_FORMAT);
  if (typeof header === "string") return fail(ErrorCode.CORRUPT_MESSAGE);
  if (header.size !== records.length || header.recordsCount === 0) return fail(ErrorCode.CORRUPT_MESSAGE);
  if (isTransactional(header.attributes) || isControl(header.attributes)) return fail(ErrorCode.INVALID_REQUEST);

  const log = partition.log;
  const verdict = partition.producers.check(header);
  if (verdict.kind === "error") return fail(verdict.code);
  touched.add(log);
  if (verdict.kind === "duplicate") {
    return { index, error: ErrorCode.NONE, baseOffset: verdict.baseOffset, logStartOffset: log.logStartOffset };
  }
  const baseOffset = log.append(records, header);
  partition.producers.record(header, baseOffset);
  return { index, error: ErrorCode.NONE, baseOffset, logStartOffset: log.logStartOffset };
}

export const produceApi = defineApi<ProduceRequest>({
  key: 0,
  name: "Produce",
  minVersion: 3,
  maxVersion: 7,
  decode(r) {
    const transactionalId = r.nullableString();
    const acks = r.int16();
    const timeoutMs = r.int32();
    const topics = r.array((r) => ({
      name: r.string(),
      partitions: r.array((r) => ({ index: r.int32(), records: r.nullableBytes() })),
    }));
    return { transactionalId, acks, timeoutMs, topics };
  },
  async handle(req, ctx) {
    const v = ctx.apiVersion;
    const touched = new Set<PartitionLog>();
    const validAcks = req.acks === 0 || req.acks === 1 || req.acks === -1;
    const answers = req.topics.map((t) => ({
      name: t.name,
      partitions: t.partitions.map((p) =>
        validAcks
          ? appendPartition(ctx.broker, t.name, p.index, p.records, touched)
          : { index: p.index, error: ErrorCode.INVALID_REQUIRED_ACKS, baseOffset: -1, logStartOffset: -1 },
      ),
    }));
    if (req.acks === 0) return null;
    if (req.acks === -1 && touched.size > 0) {
      try {
        await Promise.all([...touched].map((l) => l.whenDurable()));
      } catch (err) {
        ctx.broker.logger.error("fsync failed", { error: String(err) });
        for (const t of answers)
          for (const p of t.partitions) if (p.error === 0) p.error = ErrorCode.UNKNOWN_SERVER_ERROR;
      }
    }
    const w = new Writer();
    w.array(answers, (w, t) => {
      w.string(t.name);
      w.array(t.partitions, (w, p) => {
        w.int32(p.index).int16(p.error).int64(p.baseOffset);
        w.int64(-1); // log_append_time: we keep the producer's CreateTime
        if (v >= 5) w.int64(p.logStartOffset);
      });
    });
    w.int32(0);
    return w;
  },
});
