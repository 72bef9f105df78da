import { ErrorCode } from "../protocol/errors.js";
import { readBatchHeader, recordTimestamps } from "../protocol/record-batch.js";
import { Writer } from "../protocol/writer.js";
import type { PartitionLog } from "../log/partition-log.js";
import { defineApi } from "./types.js";

const LATEST = -1;
const EARLIEST = -2;

interface ListOffsetsRequest {
  topics: { name: string; partitions: { index: number; timestamp: number }[] }[];
}

/** First offset whose record timestamp is at or after `ts`; compressed batches answer at batch level. */
function offsetForTimestamp(log: PartitionLog, ts: number): { offset: number; timestamp: number } {
  for (const { entry, read } of log.batches()) {
    if (entry.maxTimestamp < ts) continue;
    const batch = read();
    const header = readBatchHeader(batch, 0, false);
    if (typeof header !== "string") {
      const records = recordTimestamps(batch, header);
      if (records) {
        const hit = records.find((r) => r.timestamp >= ts);
        if (hit) return { offset: entry.offset + hit.offsetDelta, timestamp: hit.timestamp };
        continue;
      }
    }
    return { offset: entry.offset, timestamp: entry.maxTimestamp };
  }
  return { offset: -1, timestamp: -1 };
}

export const listOffsetsApi = defineApi<ListOffsetsRequest>({
  key: 2,
  name: "ListOffsets",
  minVersion: 1,
  maxVersion: 3,
  decode(r, version) {
    r.int32(); // replica_id
    if (version >= 2) r.int8(); // isolation_level: LSO = HWM, so both levels answer the same
    const topics = r.array((r) => ({
      name: r.string(),
      partitions: r.array((r) => ({ index: r.int32(), timestamp: r.int64() })),
    }));
    return { topics };
  },
  handle(req, ctx) {
    const v = ctx.apiVersion;
    const answers = req.topics.map((t) => ({
      name: t.name,
      partitions: t.partitions.map((p) => {
        const partition = ctx.broker.topics.partition(t.name, p.index);
        if (!partition)
          return { index: p.index, error: ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, timestamp: -1, offset: -1 };
        const log = partition.log;
        if (p.timestamp === LATEST) return { index: p.index, error: 0, timestamp: -1, offset: log.highWatermark };
        if (p.timestamp === EARLIEST) return { index: p.index, error: 0, timestamp: -1, offset: log.logStartOffset };
        return { index: p.index, error: 0, ...offsetForTimestamp(log, p.timestamp) };
      }),
    }));
    const w = new Writer();
    if (v >= 2) w.int32(0);
    w.array(answers, (w, t) => {
      w.string(t.name);
      w.array(t.partitions, (w, p) => w.int32(p.index).int16(p.error).int64(p.timestamp).int64(p.offset));
    });
    return w;
  },
});
