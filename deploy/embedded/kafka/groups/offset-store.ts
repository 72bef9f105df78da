import fs from "node:fs";
import path from "node:path";
import { Syncer } from "../log/syncer.js";
import { syncDir } from "../log/partition-log.js";

export interface CommittedOffset {
  offset: number;
  metadata: string;
  commitTimestamp: number;
}

interface LogLine {
  g: string;
  t: string;
  p?: number;
  o?: number;
  m?: string;
  ts?: number;
  /** Marks the removal of every offset of topic `t` in group `g` ("*" for all groups). */
  del?: true;
}

/**
 * Committed offsets: a map in memory, and an append-only JSON-lines journal on disk that is replayed
 * on start and rewritten as a snapshot when it has grown well past the live data.
 */
export class OffsetStore {
  private offsets = new Map<string, Map<string, Map<number, CommittedOffset>>>();
  private fd = -1;
  private journalLines = 0;
  private readonly file: string | null;
  private readonly syncer: Syncer;

  constructor(dataDir: string | null) {
    this.file = dataDir ? path.join(dataDir, "committed-offsets.jsonl") : null;
    this.syncer = new Syncer(
      () =>
        new Promise((resolve, reject) => {
          const fd = this.fd;
          if (fd < 0) return resolve();
          // If compaction swapped the file meanwhile, the snapshot was fsynced already: not an error.
          fs.fdatasync(fd, (e) => (e && this.fd === fd ? reject(e) : resolve()));
        }),
    );
  }

  load(): void {
    if (!this.file) return;
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    if (fs.existsSync(this.file)) {
      const text = fs.readFileSync(this.file, "utf8");
      let validLength = 0;
      for (const line of text.split("\n")) {
        if (line.length === 0) {
          validLength += 1;
          continue;
        }
        let entry: LogLine;
        try {
          entry = JSON.parse(line) as LogLine;
        } catch {
          // Only the last line can be torn by a crash; it was never acknowledged.
          break;
        }
        this.applyLine(entry);
        this.journalLines++;
        validLength += Buffer.byteLength(line) + 1;
      }
      const size = fs.statSync(this.file).size;
      if (validLength < size) fs.truncateSync(this.file, Math.min(validLength, size));
    }
    this.fd = fs.openSync(this.file, "a");
  }

  private applyLine(e: LogLine): void {
    if (e.del) {
      const groups = e.g === "*" ? [...this.offsets.keys()] : [e.g];
      for (const g of groups) this.offsets.get(g)?.delete(e.t);
      return;
    }
    let topics = this.offsets.get(e.g);
    if (!topics) this.offsets.set(e.g, (topics = new Map()));
    let parts = topics.get(e.t);
    if (!parts) topics.set(e.t, (parts = new Map()));
    parts.set(e.p ?? 0, { offset: e.o ?? -1, metadata: e.m ?? "", commitTimestamp: e.ts ?? 0 });
  }

  private append(lines: LogLine[]): void {
    for (const l of lines) this.applyLine(l);
    if (this.fd < 0) return;
    const text = lines.map((l) => JSON.stringify(l)).join("\n") + "\n";
    fs.writeSync(this.fd, text);
    this.journalLines += lines.length;
    this.syncer.markWritten();
    if (this.journalLines > 10_000 && this.journalLines > 4 * this.liveCount()) this.compact();
  }

  commit(group: string, entries: { topic: string; partition: number; offset: number; metadata: string }[]): void {
    const ts = Date.now();
    this.append(entries.map((e) => ({ g: group, t: e.topic, p: e.partition, o: e.offset, m: e.metadata, ts })));
  }

  whenDurable(): Promise<void> {
    return this.syncer.whenDurable();
  }

  get(group: string, topic: string, partition: number): CommittedOffset | undefined {
    return this.offsets.get(group)?.get(topic)?.get(partition);
  }

  /** Every committed partition of a group, for OffsetFetch with a null topic list. */
  all(group: string): { topic: string; partition: number; committed: CommittedOffset }[] {
    const out: { topic: string; partition: number; committed: CommittedOffset }[] = [];
    for (const [topic, parts] of this.offsets.get(group) ?? []) {
      for (const [partition, committed] of parts) out.push({ topic, partition, committed });
    }
    return out;
  }

  groups(): string[] {
    return [...this.offsets.entries()].filter(([, t]) => [...t.values()].some((p) => p.size > 0)).map(([g]) => g);
  }

  deleteTopic(topic: string): void {
    this.append([{ g: "*", t: topic, del: true }]);
  }

  private liveCount(): number {
    let n = 0;
    for (const t of this.offsets.values()) for (const p of t.values()) n += p.size;
    return n;
  }

  /** Rewrites the journal as a snapshot: tmp file, fsync, rename, fsync the directory. */
  private compact(): void {
    if (!this.file) return;
    const lines: string[] = [];
    for (const [g, topics] of this.offsets) {
      for (const [t, parts] of topics) {
        for (const [p, c] of parts)
          lines.push(JSON.stringify({ g, t, p, o: c.offset, m: c.metadata, ts: c.commitTimestamp }));
      }
    }
    const tmp = this.file + ".tmp";
    const fd = fs.openSync(tmp, "w");
    fs.writeSync(fd, lines.length ? lines.join("\n") + "\n" : "");
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(tmp, this.file);
    syncDir(path.dirname(this.file));
    fs.closeSync(this.fd);
    this.fd = fs.openSync(this.file, "a");
    this.journalLines = lines.length;
  }

  close(): void {
    if (this.fd >= 0) {
      fs.fdatasyncSync(this.fd);
      fs.closeSync(this.fd);
      this.fd = -1;
    }
  }
}
