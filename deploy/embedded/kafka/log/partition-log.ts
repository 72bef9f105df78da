import fs from "node:fs";
import path from "node:path";
import type { BatchHeader } from "../protocol/record-batch.js";
import { assignBaseOffset } from "../protocol/record-batch.js";
import { Segment, type BatchEntry } from "./segment.js";
import { Syncer } from "./syncer.js";

export interface RetentionPolicy {
  /** Delete closed segments whose newest record is older than this; -1 keeps forever. */
  retentionMs: number;
  /** Delete the oldest closed segments while the partition is larger than this; -1 means no limit. */
  retentionBytes: number;
  /** Roll to a new segment file past this size. */
  segmentBytes: number;
  /** Roll a non-empty active segment older than this, so time retention can reach its data. */
  segmentMs: number;
}

export interface ReadResult {
  parts: Buffer[];
  bytes: number;
}

/**
 * The log of one partition: ordered segments, offsets assigned on append, the high watermark (on a
 * single node every appended batch is committed), the log start offset moved by retention.
 */
export class PartitionLog {
  private segments: Segment[] = [];
  private listeners = new Set<() => void>();
  private readonly syncer: Syncer;
  private closed = false;

  private constructor(
    readonly topic: string,
    readonly partition: number,
    private readonly dir: string | null,
    public policy: RetentionPolicy,
  ) {
    this.syncer = new Syncer(() => this.active.storage.sync());
  }

  static inMemory(topic: string, partition: number, policy: RetentionPolicy): PartitionLog {
    const log = new PartitionLog(topic, partition, null, policy);
    log.segments.push(Segment.inMemory(0));
    return log;
  }

  /** Opens (or creates) the partition directory and replays its segments. */
  static open(
    topic: string,
    partition: number,
    dir: string,
    policy: RetentionPolicy,
    onRecoveredBatch: (header: BatchHeader) => void,
  ): { log: PartitionLog; truncatedBytes: number } {
    fs.mkdirSync(dir, { recursive: true });
    const log = new PartitionLog(topic, partition, dir, policy);
    const files = fs
      .readdirSync(dir)
      .filter((f) => /^\d{20}\.log$/.test(f))
      .sort();
    let truncatedBytes = 0;
    for (const f of files) {
      const base = Number(f.slice(0, 20));
      const { segment, truncatedBytes: cut } = Segment.recoverFile(path.join(dir, f), base, onRecoveredBatch);
      truncatedBytes += cut;
      log.segments.push(segment);
    }
    if (log.segments.length === 0) log.segments.push(Segment.createFile(dir, 0));
    return { log, truncatedBytes };
  }

  private get active(): Segment {
    return this.segments[this.segments.length - 1]!;
  }

  get highWatermark(): number {
    return this.active.nextOffset;
  }

  get logStartOffset(): number {
    for (const s of this.segments) if (s.entries.length > 0) return s.entries[0]!.offset;
    return this.active.nextOffset;
  }

  get sizeBytes(): number {
    let n = 0;
    for (const s of this.segments) n += s.size;
    return n;
  }

  get segmentCount(): number {
    return this.segments.length;
  }

  /**
   * Appends one validated batch, rewriting its baseOffset in place. Synchronous on purpose: offsets
   * are handed out in the order requests arrive, with no interleaving.
   */
  append(batch: Buffer, header: BatchHeader): number {
    if (this.closed) throw new Error(`partition ${this.topic}-${this.partition} is closed`);
    const baseOffset = this.highWatermark;
    if (this.active.size > 0 && this.active.size + batch.length > this.policy.segmentBytes) this.roll();
    assignBaseOffset(batch, baseOffset);
    this.active.append(batch, {
      baseOffset,
      lastOffsetDelta: header.lastOffsetDelta,
      maxTimestamp: header.maxTimestamp,
    });
    this.syncer.markWritten();
    for (const l of [...this.listeners]) l();
    return baseOffset;
  }

  /** Resolves once everything appended so far is on stable storage. */
  whenDurable(): Promise<void> {
    return this.syncer.whenDurable();
  }

  private roll(): void {
    const next = this.highWatermark;
    const old = this.active;
    // The old file gets no more writes, so make it durable now; later syncs only cover the new file.
    old.storage.syncNow();
    this.segments.push(this.dir ? Segment.createFile(this.dir, next) : Segment.inMemory(next));
    if (this.dir) syncDir(this.dir);
  }

  /** Finds the batch containing `offset`, or the first one after it. */
  private locate(offset: number): { seg: number; entry: number } | null {
    let lo = 0;
    let hi = this.segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.segments[mid]!.baseOffset <= offset) lo = mid;
      else hi = mid - 1;
    }
    for (let s = lo; s < this.segments.length; s++) {
      const seg = this.segments[s]!;
      const i = seg.indexFor(offset);
      if (i < seg.entries.length) return { seg: s, entry: i };
    }
    return null;
  }

  /**
   * Whole batches from the one containing `offset`. The first batch is always returned even above
   * maxBytes, otherwise a consumer facing a large batch could never make progress.
   */
  read(offset: number, maxBytes: number): ReadResult {
    const start = this.locate(offset);
    const parts: Buffer[] = [];
    let bytes = 0;
    if (!start) return { parts, bytes };
    for (let s = start.seg; s < this.segments.length; s++) {
      const seg = this.segments[s]!;
      const first = s === start.seg ? start.entry : 0;
      let last = first;
      let runBytes = 0;
      for (let i = first; i < seg.entries.length; i++) {
        const e: BatchEntry = seg.entries[i]!;
        if (bytes + runBytes > 0 && bytes + runBytes + e.size > maxBytes) break;
        runBytes += e.size;
        last = i + 1;
      }
      if (last > first) {
        parts.push(...seg.storage.read(seg.entries[first]!.position, runBytes));
        bytes += runBytes;
      }
      if (last < seg.entries.length) break;
    }
    return { parts, bytes };
  }

  /** Batch entries for timestamp lookups (ListOffsets). */
  *batches(): Generator<{ entry: BatchEntry; read: () => Buffer }> {
    for (const seg of this.segments) {
      for (const e of seg.entries) yield { entry: e, read: () => Buffer.concat(seg.storage.read(e.position, e.size)) };
    }
  }

  onAppend(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Deletes whole closed segments past the time or size limit; returns bytes freed. */
  applyRetention(now: number): number {
    const p = this.policy;
    if (p.segmentMs >= 0 && this.active.entries.length > 0 && now - this.active.createdAt >= p.segmentMs) this.roll();
    let freed = 0;
    let total = this.sizeBytes;
    while (this.segments.length > 1) {
      const oldest = this.segments[0]!;
      const expired = p.retentionMs >= 0 && oldest.maxTimestamp >= 0 && oldest.maxTimestamp < now - p.retentionMs;
      const tooBig = p.retentionBytes >= 0 && total - oldest.size >= p.retentionBytes;
      const empty = oldest.entries.length === 0;
      if (!expired && !tooBig && !empty) break;
      this.segments.shift();
      total -= oldest.size;
      freed += oldest.size;
      oldest.storage.remove();
    }
    return freed;
  }

  close(): void {
    this.closed = true;
    for (const s of this.segments) {
      if (this.syncer.isDirty) s.storage.syncNow();
      s.storage.close();
    }
    for (const l of [...this.listeners]) l();
    this.listeners.clear();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Removes every file of this partition (topic deletion). */
  destroy(): void {
    this.closed = true;
    for (const s of this.segments) s.storage.remove();
    this.segments = [Segment.inMemory(0)];
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
    for (const l of [...this.listeners]) l();
    this.listeners.clear();
  }
}

export function syncDir(dir: string): void {
  try {
    const fd = fs.openSync(dir, "r");
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // Some filesystems refuse fsync on directories; the file data itself is still synced.
  }
}
