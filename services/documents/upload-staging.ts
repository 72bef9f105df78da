import { createReadStream, type ReadStream } from "node:fs";
import { mkdir, open, readdir, rm } from "node:fs/promises";
import path from "node:path";

const PART_FILE = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.part$/;

/** Whether a file operation failed because the file (or its directory) is not there. */
export const isMissing = (err: unknown) => (err as { code?: string })?.code === "ENOENT";

/**
 * Where the bytes of unfinished resumable uploads wait: one `<upload_id>.part` file each, written
 * at the part's offset.
 */
export class UploadStaging {
  constructor(readonly dir: string) {}

  private file(id: string): string {
    return path.join(this.dir, `${id}.part`);
  }

  async create(id: string): Promise<void> {
    const file = this.file(id);
    await mkdir(this.dir, { recursive: true });
    const fh = await open(file, "wx");
    await fh.close();
    // The directory entry must survive a crash too, or acknowledged parts would have no file.
    const dir = await open(this.dir, "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  async write(id: string, data: Uint8Array, position: number): Promise<void> {
    const fh = await open(this.file(id), "r+");
    try {
      for (let done = 0; done < data.length;) {
        const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
        done += bytesWritten;
      }
      // A part is acknowledged only once it is on disk: the client will not send it again.
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  /** Up to `length` bytes from the start; fewer if the file is shorter. */
  async readHead(id: string, length: number): Promise<Buffer> {
    if (length === 0) return Buffer.alloc(0);
    const fh = await open(this.file(id), "r");
    try {
      const buf = Buffer.alloc(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await fh.read(buf, got, length - got, got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return buf.subarray(0, got);
    } finally {
      await fh.close();
    }
  }

  /** The first `size` bytes, as a stream. */
  read(id: string, size: number): ReadStream {
    return createReadStream(this.file(id), { start: 0, end: size - 1 });
  }

  async remove(id: string): Promise<void> {
    await rm(this.file(id), { force: true });
  }

  /** The upload ids that have a staging file. */
  async ids(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if (isMissing(err)) return [];
      throw err;
    }
    return names.flatMap((n) => PART_FILE.exec(n)?.[1] ?? []);
  }
}
