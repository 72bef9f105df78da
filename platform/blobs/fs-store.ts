import { createHash, randomUUID } from "node:crypto";
import { mkdir, open, readdir, rename, rm, stat, type FileHandle } from "node:fs/promises";
import { dirname, join } from "node:path";
import { addAbortSignal, type Readable } from "node:stream";
import { nextUnlessAborted } from "../lifecycle/abortable.js";
import {
  assertBlobKey,
  BlobAbortedError,
  BlobIntegrityError,
  BlobNotFoundError,
  BlobStoreError,
  BlobTooLargeError,
  type BlobRef,
  type BlobSource,
  type BlobStore,
  type GetOptions,
  type PutOptions,
} from "./types.js";

export interface FsBlobStoreOptions {
  /** Root directory; created on first use. */
  root: string;
  /** Largest blob accepted, in bytes. Default 1 GiB. */
  maxBytes?: number;
  /** fsync files and directories before reporting success. Default true; tests may turn it off. */
  durable?: boolean;
}

const TMP_DIR = ".tmp";
const DEFAULT_MAX_BYTES = 1024 * 1024 * 1024;

/**
 * Content-addressed blobs on a local filesystem: <root>/ab/cd/<sha256>.
 *
 * Uploads stream into <root>/.tmp and are renamed into place only once complete and synced. The
 * temp file cannot live in the blob's own shard directory because that directory is only known
 * once the last byte is hashed; .tmp sits under the same root, hence on the same filesystem, which
 * is what makes rename(2) atomic. A reader therefore sees either no blob or the whole blob.
 */
export class FsBlobStore implements BlobStore {
  readonly root: string;
  readonly maxBytes: number;
  private readonly durable: boolean;
  private readonly tmpDir: string;

  constructor(opts: FsBlobStoreOptions) {
    this.root = opts.root;
    this.maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
    this.durable = opts.durable ?? true;
    this.tmpDir = join(this.root, TMP_DIR);
  }

  /** Where a blob lives; exposed for operators and tests, not for callers to write to. */
  pathFor(key: string): string {
    assertBlobKey(key);
    return join(this.root, key.slice(0, 2), key.slice(2, 4), key);
  }

  async put(source: BlobSource, opts: PutOptions = {}): Promise<BlobRef> {
    const limit = Math.min(opts.maxBytes ?? this.maxBytes, this.maxBytes);
    const signal = opts.signal;
    if (opts.expectedSha256 !== undefined) assertBlobKey(opts.expectedSha256);
    if (signal?.aborted) throw new BlobAbortedError(signal.reason);

    const tmpPath = join(this.tmpDir, `${randomUUID()}.part`);
    const hash = createHash("sha256");
    let size = 0;
    let fh: FileHandle | undefined = await inDirectory(this.tmpDir, () => open(tmpPath, "wx"));
    try {
      for await (const chunk of abortable(source, signal)) {
        if (!(chunk instanceof Uint8Array)) {
          throw new TypeError("A blob source must yield Uint8Array chunks (Buffers are fine).");
        }
        size += chunk.byteLength;
        // Checked before writing so an oversize upload never puts more than the limit on disk.
        if (size > limit) throw new BlobTooLargeError(limit);
        hash.update(chunk);
        await writeFully(fh, chunk);
      }
      if (signal?.aborted) throw new BlobAbortedError(signal.reason);
      if (this.durable) await fh.sync();
      await fh.close();
      fh = undefined;

      const sha256 = hash.digest("hex");
      if (opts.expectedSha256 !== undefined && opts.expectedSha256 !== sha256) {
        throw new BlobIntegrityError(opts.expectedSha256, sha256);
      }
      const finalPath = this.pathFor(sha256);
      if (await fileExists(finalPath)) {
        // Same digest, same bytes: the earlier copy stands and this one is discarded.
        await rm(tmpPath, { force: true });
      } else {
        // A concurrent put of the same content may rename first; replacing identical bytes is harmless.
        await inDirectory(dirname(finalPath), () => rename(tmpPath, finalPath));
        if (this.durable) await syncDir(dirname(finalPath));
      }
      return { sha256, size, key: sha256 };
    } catch (err) {
      await fh?.close().catch(() => {});
      await rm(tmpPath, { force: true });
      if (err instanceof BlobStoreError) throw err;
      if (signal?.aborted) throw new BlobAbortedError(signal.reason);
      throw err;
    }
  }

  async get(key: string, opts: GetOptions = {}): Promise<Readable> {
    const path = this.pathFor(key);
    let fh: FileHandle;
    try {
      fh = await open(path, "r");
    } catch (err) {
      if (isErrno(err, "ENOENT")) throw new BlobNotFoundError(key);
      throw err;
    }
    const stream = fh.createReadStream({
      start: opts.range?.start,
      end: opts.range?.end,
      autoClose: true,
    });
    if (opts.signal) addAbortSignal(opts.signal, stream);
    return stream;
  }

  async stat(key: string): Promise<{ size: number } | undefined> {
    try {
      const s = await stat(this.pathFor(key));
      return { size: s.size };
    } catch (err) {
      if (isErrno(err, "ENOENT")) return undefined;
      throw err;
    }
  }

  async exists(key: string): Promise<boolean> {
    return (await this.stat(key)) !== undefined;
  }

  async delete(key: string): Promise<boolean> {
    const path = this.pathFor(key);
    try {
      // Shard directories are left in place: removing them would race a concurrent put's rename.
      await rm(path);
      return true;
    } catch (err) {
      if (isErrno(err, "ENOENT")) return false;
      throw err;
    }
  }

  /**
   * Removes temp files left by a crashed process. In-flight uploads keep touching their temp file,
   * so anything untouched for `olderThanMs` is abandoned. Returns how many files were removed.
   */
  async sweepTemp(olderThanMs = 60 * 60 * 1000): Promise<number> {
    let names: string[];
    try {
      names = await readdir(this.tmpDir);
    } catch (err) {
      if (isErrno(err, "ENOENT")) return 0;
      throw err;
    }
    const cutoff = Date.now() - olderThanMs;
    let removed = 0;
    for (const name of names) {
      const p = join(this.tmpDir, name);
      const s = await stat(p).catch(() => undefined);
      if (s && s.mtimeMs < cutoff) {
        await rm(p, { force: true });
        removed++;
      }
    }
    return removed;
  }
}

/**
 * Iterates the source but gives up as soon as the signal fires, even while the source is stalled
 * waiting for the network: a plain for-await would only notice the abort at the next chunk.
 */
async function* abortable(source: BlobSource, signal: AbortSignal | undefined): AsyncGenerator<Uint8Array> {
  if (source instanceof Uint8Array) {
    yield source;
    return;
  }
  // Node's WHATWG ReadableStream is async-iterable even though the DOM typings do not say so.
  const iterable = source as AsyncIterable<Uint8Array> | Iterable<Uint8Array>;
  const it: Iterator<Uint8Array> | AsyncIterator<Uint8Array> =
    Symbol.asyncIterator in iterable ? iterable[Symbol.asyncIterator]() : iterable[Symbol.iterator]();
  let finished = false;
  try {
    for (;;) {
      const r = signal
        ? await nextUnlessAborted(it, signal, () => new BlobAbortedError(signal.reason))
        : await it.next();
      if (r.done) {
        finished = true;
        return;
      }
      yield r.value;
    }
  } finally {
    if (!finished) {
      // A Node stream's iterator only tears down after its pending read settles; destroying the
      // stream releases the socket or file behind it now.
      const destroy = (source as { destroy?: unknown }).destroy;
      if (typeof destroy === "function") destroy.call(source);
      // Not awaited: a stalled async generator only runs its return() after its pending next().
      void Promise.resolve(it.return?.()).catch(() => {});
    }
  }
}

/**
 * Runs `op`, which creates an entry in `dir`; only if that fails for want of the directory is it
 * created and `op` tried again. Most puts land in a directory that exists, and asking first would
 * cost a mkdir on every one.
 */
async function inDirectory<T>(dir: string, op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (err) {
    if (!isErrno(err, "ENOENT")) throw err;
    await mkdir(dir, { recursive: true });
    return op();
  }
}

async function writeFully(fh: FileHandle, chunk: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < chunk.byteLength) {
    const { bytesWritten } = await fh.write(chunk, offset, chunk.byteLength - offset);
    offset += bytesWritten;
  }
}

async function fileExists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if (isErrno(err, "ENOENT")) return false;
    throw err;
  }
}

/** Makes the rename itself durable; some platforms cannot open directories, which is fine there. */
async function syncDir(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(dir, "r");
    await fh.sync();
  } catch (err) {
    if (!isErrno(err, "EISDIR") && !isErrno(err, "EPERM") && !isErrno(err, "EINVAL")) throw err;
  } finally {
    await fh?.close();
  }
}

function isErrno(err: unknown, code: string): boolean {
  return typeof err === "object" && err !== null && (err as { code?: unknown }).code === code;
}
