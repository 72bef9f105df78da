import fs from "node:fs";

/** Where a segment's bytes live: a file under the data dir, or memory for unit tests. */
export interface SegmentStorage {
  readonly size: number;
  append(data: Buffer): void;
  /** Reads a byte range made of whole batches; may return several buffers (memory mode). */
  read(position: number, length: number): Buffer[];
  sync(): Promise<void>;
  syncNow(): void;
  close(): void;
  remove(): void;
}

export class FileStorage implements SegmentStorage {
  private fd: number;
  private bytes: number;

  constructor(
    readonly path: string,
    existingSize = 0,
  ) {
    // "a+" keeps appends at the end even if someone truncates behind us, and still allows pread.
    this.fd = fs.openSync(path, "a+");
    this.bytes = existingSize;
  }

  get size(): number {
    return this.bytes;
  }

  append(data: Buffer): void {
    let done = 0;
    while (done < data.length) done += fs.writeSync(this.fd, data, done, data.length - done);
    this.bytes += data.length;
  }

  read(position: number, length: number): Buffer[] {
    const out = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const n = fs.readSync(this.fd, out, got, length - got, position + got);
      if (n === 0) break;
      got += n;
    }
    return [got === length ? out : out.subarray(0, got)];
  }

  sync(): Promise<void> {
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  syncNow(): void {
    fs.fdatasyncSync(this.fd);
  }

  close(): void {
    if (this.fd >= 0) {
      fs.closeSync(this.fd);
      this.fd = -1;
    }
  }

  remove(): void {
    this.close();
    fs.rmSync(this.path, { force: true });
  }
}

export class MemoryStorage implements SegmentStorage {
  private parts: Buffer[] = [];
  private starts: number[] = [];
  private bytes = 0;

  get size(): number {
    return this.bytes;
  }

  append(data: Buffer): void {
    // Copy: the caller's buffer is usually a view into a request frame we must not pin.
    this.parts.push(Buffer.from(data));
    this.starts.push(this.bytes);
    this.bytes += data.length;
  }

  read(position: number, length: number): Buffer[] {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= position) lo = mid;
      else hi = mid - 1;
    }
    const out: Buffer[] = [];
    let need = length;
    for (let i = lo; i < this.parts.length && need > 0; i++) {
      const part = this.parts[i]!;
      const skip = i === lo ? position - this.starts[i]! : 0;
      const take = Math.min(part.length - skip, need);
      out.push(part.subarray(skip, skip + take));
      need -= take;
    }
    return out;
  }

  sync(): Promise<void> {
    return Promise.resolve();
  }

  syncNow(): void {}

  close(): void {}

  remove(): void {
    this.parts = [];
    this.starts = [];
  }
}
