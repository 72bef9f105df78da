import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat, utimes, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { Readable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  BlobAbortedError,
  BlobIntegrityError,
  BlobNotFoundError,
  BlobTooLargeError,
  FsBlobStore,
  InvalidBlobKeyError,
} from "../../platform/blobs/index.js";

let root: string;
let store: FsBlobStore;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "medmesh-blobs-"));
  store = new FsBlobStore({ root, maxBytes: 64 * 1024 * 1024 });
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** Every regular file under the root, relative to it: the test's view of "what was left behind". */
async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(d: string): Promise<void> {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push(relative(dir, p));
    }
  }
  await walk(dir);
  return out.sort();
}

async function readAll(stream: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

describe("FsBlobStore put/get", () => {
  it("stores a buffer under its SHA-256 in a two-level sharded path and reads it back", async () => {
    const data = Buffer.from("The quick brown fox");
    const ref = await store.put(data);
    expect(ref).toEqual({ sha256: sha(data), size: data.length, key: sha(data) });
    const k = ref.key;
    expect(await filesUnder(root)).toEqual([join(k.slice(0, 2), k.slice(2, 4), k)]);
    expect(await readAll(await store.get(k))).toEqual(data);
    expect(await store.exists(k)).toBe(true);
    expect(await store.stat(k)).toEqual({ size: data.length });
  });

  it("accepts a Node Readable, an async generator and a WHATWG ReadableStream alike", async () => {
    const data = randomBytes(100_000);
    const chunks = [data.subarray(0, 30_000), data.subarray(30_000, 70_000), data.subarray(70_000)];
    const fromNode = await store.put(Readable.from(chunks));
    const fromGen = await store.put(
      (async function* () {
        for (const c of chunks) yield c;
      })(),
    );
    const fromWeb = await store.put(
      new ReadableStream<Uint8Array>({
        start(controller) {
          for (const c of chunks) controller.enqueue(new Uint8Array(c));
          controller.close();
        },
      }),
    );
    expect(fromNode.sha256).toBe(sha(data));
    expect(fromGen).toEqual(fromNode);
    expect(fromWeb).toEqual(fromNode);
    expect(await filesUnder(root)).toHaveLength(1);
  });

  it("stores empty content as the well-known empty digest", async () => {
    const ref = await store.put(new Uint8Array(0));
    expect(ref.sha256).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect(ref.size).toBe(0);
    expect((await readAll(await store.get(ref.key))).length).toBe(0);
  });

  it("returns an inclusive byte range when asked", async () => {
    const ref = await store.put(Buffer.from("0123456789"));
    expect((await readAll(await store.get(ref.key, { range: { start: 2, end: 5 } }))).toString()).toBe("2345");
    expect((await readAll(await store.get(ref.key, { range: { start: 7 } }))).toString()).toBe("789");
  });

  it("putting identical content twice is idempotent: same ref, one file, original untouched", async () => {
    const data = Buffer.from("same bytes");
    const first = await store.put(data);
    const before = await stat(store.pathFor(first.key));
    const second = await store.put(Readable.from([data.subarray(0, 4), data.subarray(4)]));
    expect(second).toEqual(first);
    expect((await stat(store.pathFor(first.key))).ino).toBe(before.ino);
    expect(await filesUnder(root)).toHaveLength(1);
  });

  it("concurrent puts of the same content all succeed with one stored file and no temp files", async () => {
    const data = randomBytes(256 * 1024);
    const refs = await Promise.all(
      Array.from({ length: 16 }, (_, i) =>
        store.put(Readable.from([data.subarray(0, 1000 * i), data.subarray(1000 * i)])),
      ),
    );
    for (const r of refs) expect(r).toEqual({ sha256: sha(data), size: data.length, key: sha(data) });
    expect(await filesUnder(root)).toEqual([relative(root, store.pathFor(sha(data)))]);
    expect(await readFile(store.pathFor(sha(data)))).toEqual(data);
  });

  it("concurrent puts of different content each land in their own file", async () => {
    const blobs = Array.from({ length: 8 }, () => randomBytes(10_000));
    const refs = await Promise.all(blobs.map((b) => store.put(b)));
    expect(new Set(refs.map((r) => r.key)).size).toBe(8);
    for (const [i, r] of refs.entries()) expect(await readFile(store.pathFor(r.key))).toEqual(blobs[i]);
    expect(await filesUnder(root)).toHaveLength(8);
  });

  it("delete removes the blob (true), a second delete reports false, and get then fails with not_found", async () => {
    const ref = await store.put(Buffer.from("to delete"));
    expect(await store.delete(ref.key)).toBe(true);
    expect(await store.delete(ref.key)).toBe(false);
    expect(await store.exists(ref.key)).toBe(false);
    await expect(store.get(ref.key)).rejects.toBeInstanceOf(BlobNotFoundError);
  });
});

describe("FsBlobStore bad input", () => {
  it("get of an unknown key rejects with BlobNotFoundError and stat returns undefined", async () => {
    const key = "a".repeat(64);
    await expect(store.get(key)).rejects.toMatchObject({ code: "not_found", key });
    expect(await store.stat(key)).toBeUndefined();
  });

  it.each(["../../etc/passwd", "A".repeat(64), "abc", "g".repeat(64), ""])(
    "key %j is refused with InvalidBlobKeyError by get, exists and delete",
    async (key) => {
      await expect(store.get(key)).rejects.toBeInstanceOf(InvalidBlobKeyError);
      await expect(store.exists(key)).rejects.toBeInstanceOf(InvalidBlobKeyError);
      await expect(store.delete(key)).rejects.toBeInstanceOf(InvalidBlobKeyError);
    },
  );

  it("oversize content fails with BlobTooLargeError and leaves no blob and no temp file", async () => {
    const small = new FsBlobStore({ root, maxBytes: 1000 });
    const err = await small.put(Readable.from([randomBytes(600), randomBytes(600)])).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BlobTooLargeError);
    expect(err).toMatchObject({ code: "too_large", limit: 1000 });
    expect(await filesUnder(root)).toEqual([]);
  });

  it("content of exactly the limit is accepted; one byte more is refused", async () => {
    const small = new FsBlobStore({ root, maxBytes: 1000 });
    await expect(small.put(randomBytes(1000))).resolves.toMatchObject({ size: 1000 });
    await expect(small.put(randomBytes(1001))).rejects.toBeInstanceOf(BlobTooLargeError);
    expect(await filesUnder(root)).toHaveLength(1);
  });

  it("a per-put maxBytes tightens the limit but cannot raise it above the store's", async () => {
    const small = new FsBlobStore({ root, maxBytes: 1000 });
    await expect(small.put(randomBytes(500), { maxBytes: 100 })).rejects.toMatchObject({ limit: 100 });
    await expect(small.put(randomBytes(1500), { maxBytes: 10_000 })).rejects.toMatchObject({ limit: 1000 });
    expect(await filesUnder(root)).toEqual([]);
  });

  it("cancelling mid-stream while the source is stalled rejects with BlobAbortedError and leaves nothing", async () => {
    const ac = new AbortController();
    let wrote = 0;
    async function* stalled() {
      yield randomBytes(10_000);
      wrote++;
      yield randomBytes(10_000);
      wrote++;
      await new Promise(() => {}); // a client that stops sending
    }
    const pending = store.put(stalled(), { signal: ac.signal });
    // Abort only once the temp file demonstrably holds data, so cleanup is what is being tested.
    for (;;) {
      const temp = await filesUnder(join(root, ".tmp"));
      if (wrote === 2 && temp.length === 1 && (await stat(join(root, ".tmp", temp[0]!))).size === 20_000) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    ac.abort(new Error("client went away"));
    const err = await pending.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BlobAbortedError);
    expect(await filesUnder(root)).toEqual([]);
  });

  it("cancelling a Node Readable source destroys it and leaves nothing", async () => {
    const ac = new AbortController();
    const source = new Readable({ read() {} });
    source.push(randomBytes(5000));
    const pending = store.put(source, { signal: ac.signal });
    await new Promise((r) => setTimeout(r, 20));
    ac.abort();
    await expect(pending).rejects.toBeInstanceOf(BlobAbortedError);
    await new Promise((r) => setImmediate(r));
    expect(source.destroyed).toBe(true);
    expect(await filesUnder(root)).toEqual([]);
  });

  it("an already-aborted signal fails at once without creating any file", async () => {
    const ac = new AbortController();
    ac.abort();
    await expect(store.put(Buffer.from("x"), { signal: ac.signal })).rejects.toBeInstanceOf(BlobAbortedError);
    expect(await filesUnder(root)).toEqual([]);
  });

  it("a source that errors mid-way rejects with that error and leaves no temp file", async () => {
    async function* broken() {
      yield randomBytes(1000);
      throw new Error("connection reset");
    }
    await expect(store.put(broken())).rejects.toThrow("connection reset");
    expect(await filesUnder(root)).toEqual([]);
  });

  it("a source yielding strings instead of bytes is refused with a TypeError and leaves nothing", async () => {
    const bad = Readable.from(["text chunk"], { objectMode: true }) as AsyncIterable<never>;
    await expect(store.put(bad)).rejects.toBeInstanceOf(TypeError);
    expect(await filesUnder(root)).toEqual([]);
  });

  it("a digest mismatch against expectedSha256 fails with BlobIntegrityError and stores nothing", async () => {
    const data = Buffer.from("payload");
    await expect(store.put(data, { expectedSha256: "0".repeat(64) })).rejects.toBeInstanceOf(BlobIntegrityError);
    expect(await filesUnder(root)).toEqual([]);
    await expect(store.put(data, { expectedSha256: sha(data) })).resolves.toMatchObject({ key: sha(data) });
  });

  it("sweepTemp removes abandoned temp files and keeps fresh ones", async () => {
    await mkdir(join(root, ".tmp"), { recursive: true });
    await writeFile(join(root, ".tmp", "old.part"), "left by a crash");
    await writeFile(join(root, ".tmp", "fresh.part"), "in flight");
    const hourAgo = new Date(Date.now() - 2 * 60 * 60 * 1000);
    await utimes(join(root, ".tmp", "old.part"), hourAgo, hourAgo);
    expect(await store.sweepTemp()).toBe(1);
    expect(await filesUnder(root)).toEqual([join(".tmp", "fresh.part")]);
  });
});

describe("FsBlobStore streaming", () => {
  it("streams 50 MiB to disk without buffering: the source is never more than 4 MiB ahead of the temp file", async () => {
    const chunkSize = 1024 * 1024;
    const chunks = 50;
    const maxLag = 4 * chunkSize;
    const expected = createHash("sha256");
    let produced = 0;
    let worstLag = 0;
    const tmp = join(root, ".tmp");

    // The generator refuses to run ahead of the disk: if put() collected chunks in memory before
    // writing, the temp file would stay empty and this source would throw.
    async function* source() {
      const block = randomBytes(chunkSize);
      for (let i = 0; i < chunks; i++) {
        const names = await readdir(tmp).catch(() => [] as string[]);
        const onDisk = names.length === 1 ? (await stat(join(tmp, names[0]!))).size : 0;
        const lag = produced - onDisk;
        worstLag = Math.max(worstLag, lag);
        if (lag > maxLag) throw new Error(`put() is buffering: ${lag} bytes produced but not yet written`);
        block[0] = i; // distinct chunks, so the digest covers ordering too
        expected.update(block);
        produced += block.length;
        yield Buffer.from(block);
      }
    }
    const ref = await store.put(source());
    expect(ref.size).toBe(chunks * chunkSize);
    expect(ref.sha256).toBe(expected.digest("hex"));
    expect(worstLag).toBeLessThanOrEqual(maxLag);
    expect((await stat(store.pathFor(ref.key))).size).toBe(chunks * chunkSize);
    expect(await filesUnder(join(root, ".tmp"))).toEqual([]);

    // Reading back is streamed as well: chunks arrive in bounded pieces, and the digest matches.
    const readHash = createHash("sha256");
    let biggest = 0;
    for await (const c of await store.get(ref.key)) {
      biggest = Math.max(biggest, (c as Buffer).length);
      readHash.update(c as Buffer);
    }
    expect(readHash.digest("hex")).toBe(ref.sha256);
    expect(biggest).toBeLessThanOrEqual(1024 * 1024);
  });
});
