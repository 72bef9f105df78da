import { ErrorCode } from "../protocol/errors.js";
import { Writer } from "../protocol/writer.js";
import type { Broker } from "../broker.js";
import { defineApi } from "./types.js";

interface FetchPartition {
  index: number;
  fetchOffset: number;
  partitionMaxBytes: number;
}

interface FetchRequest {
  maxWaitMs: number;
  minBytes: number;
  maxBytes: number;
  isolationLevel: number;
  topics: { name: string; partitions: FetchPartition[] }[];
}

interface PartitionAnswer {
  index: number;
  error: number;
  highWatermark: number;
  logStartOffset: number;
  parts: Buffer[];
}

function collect(
  broker: Broker,
  req: FetchRequest,
): { answers: { name: string; partitions: PartitionAnswer[] }[]; bytes: number; anyError: boolean } {
  let bytes = 0;
  let anyError = false;
  const answers = req.topics.map((t) => ({
    name: t.name,
    partitions: t.partitions.map((p): PartitionAnswer => {
      const partition = broker.topics.partition(t.name, p.index);
      if (!partition || partition.log.isClosed) {
        anyError = true;
        return {
          index: p.index,
          error: ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
          highWatermark: -1,
          logStartOffset: -1,
          parts: [],
        };
      }
      const log = partition.log;
      const hwm = log.highWatermark;
      const start = log.logStartOffset;
      if (p.fetchOffset < start || p.fetchOffset > hwm) {
        anyError = true;
        return {
          index: p.index,
          error: ErrorCode.OFFSET_OUT_OF_RANGE,
          highWatermark: hwm,
          logStartOffset: start,
          parts: [],
        };
      }
      if (p.fetchOffset === hwm)
        return { index: p.index, error: 0, highWatermark: hwm, logStartOffset: start, parts: [] };
      const budget = Math.max(0, Math.min(p.partitionMaxBytes, req.maxBytes - bytes));
      const read = log.read(p.fetchOffset, budget);
      bytes += read.bytes;
      return { index: p.index, error: 0, highWatermark: hwm, logStartOffset: start, parts: read.parts };
    }),
  }));
  return { answers, bytes, anyError };
}

/** Resolves on the first append to any of the partitions, the deadline, or the client going away. */
function waitForData(broker: Broker, req: FetchRequest, ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const unsubscribe: (() => void)[] = [];
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      for (const u of unsubscribe) u();
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
    for (const t of req.topics) {
      for (const p of t.partitions) {
        const partition = broker.topics.partition(t.name, p.index);
        if (partition) unsubscribe.push(partition.log.onAppend(done));
      }
    }
  });
}

export const fetchApi = defineApi<FetchRequest>({
  key: 1,
  name: "Fetch",
  minVersion: 4,
  maxVersion: 11,
  decode(r, version) {
    r.int32(); // replica_id: always a consumer here
    const maxWaitMs = r.int32();
    const minBytes = r.int32();
    const maxBytes = r.int32();
    const isolationLevel = r.int8();
    if (version >= 7) {
      r.int32(); // session_id: we never create fetch sessions, so every fetch is a full one
      r.int32(); // session_epoch
    }
    const topics = r.array((r) => ({
      name: r.string(),
      partitions: r.array((r): FetchPartition => {
        const index = r.int32();
        if (version >= 9) r.int32(); // current_leader_epoch
        const fetchOffset = r.int64();
        if (version >= 5) r.int64(); // log_start_offset: only meaningful from followers
        const partitionMaxBytes = r.int32();
        return { index, fetchOffset, partitionMaxBytes };
      }),
    }));
    if (version >= 7) r.array((r) => ({ name: r.string(), partitions: r.array((r) => r.int32()) }));
    if (version >= 11) r.string(); // rack_id
    return { maxWaitMs, minBytes, maxBytes, isolationLevel, topics };
  },
  async handle(req, ctx) {
    const v = ctx.apiVersion;
    const deadline = Date.now() + Math.max(0, req.maxWaitMs);
    let result = collect(ctx.broker, req);
    // minBytes 0 means "answer now"; an error on any partition is also answered at once, as Kafka does.
    while (!result.anyError && result.bytes < req.minBytes && !ctx.signal.aborted) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      await waitForData(ctx.broker, req, left, ctx.signal);
      result = collect(ctx.broker, req);
    }
    const w = new Writer();
    w.int32(0);
    if (v >= 7) w.int16(ErrorCode.NONE).int32(0);
    w.array(result.answers, (w, t) => {
      w.string(t.name);
      w.array(t.partitions, (w, p) => {
        w.int32(p.index).int16(p.error).int64(p.highWatermark);
        w.int64(p.highWatermark); // last_stable_offset: no transactions, so everything is stable
        if (v >= 5) w.int64(p.logStartOffset);
        w.array([] as number[], () => {}); // aborted_transactions
        if (v >= 11) w.int32(-1); // preferred_read_replica: read from us
        w.bytesList(p.parts);
      });
    });
    return w;
  },
});
