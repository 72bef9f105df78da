import fs from "node:fs";
import path from "node:path";
import { readBatchHeader, type BatchHeader } from "../protocol/record-batch.js";
import { FileStorage, MemoryStorage, type SegmentStorage } from "./storage.js";

/** One stored batch: where it is and which offsets it covers. */
export interface BatchEntry {
  offset: number;
  lastOffset: number;
  position: number;
  size: number;
  maxTimestamp: number;
}

export function segmentFileName(baseOffset: number): string {
  return `${String(baseOffset).padStart(20, "0")}.log`;
}

/**
 * A contiguous run of batches in one file (or in memory). The in-memory index of every batch is
 * rebuilt from the file on start, so there is no separate index file to keep consistent.
 */
export class Segment {
  readonly entries: BatchEntry[] = [];
  maxTimestamp = -1;
  readonly createdAt = Date.now();

  private constructor(
    readonly baseOffset: number,
    readonly storage: SegmentStorage,
  ) {}

  static inMemory(baseOffset: number): Segment {
    return new Segment(baseOffset, new MemoryStorage());
  }

  static createFile(dir: string, baseOffset: number): Segment {
    return new Segment(baseOffset, new FileStorage(path.join(dir, segmentFileName(baseOffset))));
  }

  /**
   * Rebuilds the index of an existing file. A torn tail (crash mid-write, or bytes never fsynced) is
   * cut off: everything before it was acknowledged in order, nothing after it can be trusted.
   */
  static recoverFile(
    file: string,
    baseOffset: number,
    onBatch: (header: BatchHeader, batch: Buffer) => void,
  ): { segment: Segment; truncatedBytes: number } {
    const data = fs.readFileSync(file);
    let at = 0;
    const entries: BatchEntry[] = [];
    let maxTimestamp = -1;
    while (at < data.length) {
      const h = readBatchHeader(data, at, true);
      if (typeof h === "string") break;
      entries.push({
        offset: h.baseOffset,
        lastOffset: h.baseOffset + h.lastOffsetDelta,
        position: at,
        size: h.size,
        maxTimestamp: h.maxTimestamp,
      });
      if (h.maxTimestamp > maxTimestamp) maxTimestamp = h.maxTimestamp;
      onBatch(h, data.subarray(at, at + h.size));
      at += h.size;
    }
    const truncatedBytes = data.length - at;
    if (truncatedBytes > 0) fs.truncateSync(file, at);
    const segment = new Segment(baseOffset, new FileStorage(file, at));
    segment.entries.push(...entries);
    segment.maxTimestamp = maxTimestamp;
    return { segment, truncatedBytes };
  }

  get size(): number {
    return this.storage.size;
  }

  get nextOffset(): number {
    const last = this.entries[this.entries.length - 1];
    return last ? last.lastOffset + 1 : this.baseOffset;
  }

  append(batch: Buffer, header: { baseOffset: number; lastOffsetDelta: number; maxTimestamp: number }): void {
    const position = this.storage.size;
    this.storage.append(batch);
    this.entries.push({
      offset: header.baseOffset,
      lastOffset: header.baseOffset + header.lastOffsetDelta,
      position,
      size: batch.length,
      maxTimestamp: header.maxTimestamp,
    });
    if (header.maxTimestamp > this.maxTimestamp) this.maxTimestamp = header.maxTimestamp;
  }

  /** Index of the first batch whose last offset is at or after `offset`, or entries.length. */
  indexFor(offset: number): number {
    let lo = 0;
    let hi = this.entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.entries[mid]!.lastOffset < offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
