import { ErrorCode } from "../protocol/errors.js";

/** What the broker remembers about one producer on one partition: enough to spot retries. */
interface RetainedBatch {
  firstSeq: number;
  lastSeq: number;
  baseOffset: number;
}

interface ProducerEntry {
  epoch: number;
  batches: RetainedBatch[];
}

/** Kafka keeps the last five batches per producer: the client never has more than five in flight. */
const RETAINED_BATCHES = 5;
const INT32_MAX = 2147483647;

function nextSeq(seq: number): number {
  return seq === INT32_MAX ? 0 : seq + 1;
}

function lastSeqOf(baseSequence: number, lastOffsetDelta: number): number {
  const last = baseSequence + lastOffsetDelta;
  return last > INT32_MAX ? last - INT32_MAX - 1 : last;
}

export type SequenceVerdict =
  { kind: "append" } | { kind: "duplicate"; baseOffset: number } | { kind: "error"; code: number };

export interface IdempotentBatch {
  producerId: number;
  producerEpoch: number;
  baseSequence: number;
  lastOffsetDelta: number;
}

/** Sequence tracking for one partition, rebuilt from the log on start. */
export class ProducerStateTable {
  private producers = new Map<number, ProducerEntry>();

  check(b: IdempotentBatch): SequenceVerdict {
    if (b.producerId < 0) return { kind: "append" };
    const entry = this.producers.get(b.producerId);
    // First batch we see from this producer (new, or its history was removed by retention).
    if (!entry) return { kind: "append" };
    if (b.producerEpoch < entry.epoch) return { kind: "error", code: ErrorCode.INVALID_PRODUCER_EPOCH };
    if (b.producerEpoch > entry.epoch) {
      return b.baseSequence === 0
        ? { kind: "append" }
        : { kind: "error", code: ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER };
    }
    const lastSeq = lastSeqOf(b.baseSequence, b.lastOffsetDelta);
    for (const r of entry.batches) {
      if (r.firstSeq === b.baseSequence && r.lastSeq === lastSeq)
        return { kind: "duplicate", baseOffset: r.baseOffset };
    }
    const newest = entry.batches[entry.batches.length - 1];
    if (!newest || b.baseSequence === nextSeq(newest.lastSeq)) return { kind: "append" };
    return { kind: "error", code: ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER };
  }

  record(b: IdempotentBatch, baseOffset: number): void {
    if (b.producerId < 0) return;
    let entry = this.producers.get(b.producerId);
    if (!entry || entry.epoch !== b.producerEpoch) {
      entry = { epoch: b.producerEpoch, batches: [] };
      this.producers.set(b.producerId, entry);
    }
    entry.batches.push({ firstSeq: b.baseSequence, lastSeq: lastSeqOf(b.baseSequence, b.lastOffsetDelta), baseOffset });
    if (entry.batches.length > RETAINED_BATCHES) entry.batches.shift();
  }

  maxProducerId(): number {
    let max = -1;
    for (const id of this.producers.keys()) if (id > max) max = id;
    return max;
  }
}
