import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import v8 from "node:v8";
import vm from "node:vm";
import { afterAll, describe, expect, it } from "vitest";
import type { UploadRequest } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { FsBlobStore } from "../../platform/blobs/index.js";
import { receiveUpload } from "../../services/documents/upload.js";

// A real collection on demand, so "nothing holds the chunks" can be checked rather than hoped.
v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;

const CHUNK = 256 * 1024;
const CHUNKS = 48;
const CHECK_AT = 40;

/**
 * Streams CHUNKS chunks, remembering each only weakly. At CHECK_AT it lets the consumer catch up,
 * collects garbage and counts how many of the first 30 chunks are still alive: a streaming
 * consumer keeps at most the one or two in hand, a leaking one keeps them all.
 */
function trackedChunks(wrap: (bytes: Uint8Array) => unknown) {
  const refs: Array<WeakRef<Uint8Array>> = [];
  let aliveEarly = -1;
  async function* source(): AsyncGenerator<unknown> {
    for (let i = 0; i < CHUNKS; i++) {
      if (i === CHECK_AT) {
        for (let k = 0; k < 5; k++) await new Promise((r) => setImmediate(r));
        gc();
        aliveEarly = refs.slice(0, 30).filter((r) => r.deref() !== undefined).length;
      }
      const bytes = new Uint8Array(CHUNK);
      if (i === 0) bytes.set(Buffer.from("%PDF-1.7\n"));
      else bytes.fill(i % 251);
      refs.push(new WeakRef(bytes));
      yield wrap(bytes);
    }
  }
  return { source, aliveEarly: () => aliveEarly };
}

describe("streaming keeps no chunk it has passed on", () => {
  const root = mkdtempSync(path.join(os.tmpdir(), "medmesh-stream-memory-"));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const store = new FsBlobStore({ root, maxBytes: 1024 * 1024 * 1024 });

  it("the blob store, with a cancel signal that never fires", async () => {
    const t = trackedChunks((b) => b);
    const ref = await store.put(t.source() as AsyncIterable<Uint8Array>, { signal: new AbortController().signal });
    expect(ref.size).toBe(CHUNK * CHUNKS);
    expect(t.aliveEarly()).toBeGreaterThanOrEqual(0);
    expect(t.aliveEarly()).toBeLessThanOrEqual(2);
  });

  it("an Upload stream into the blob store", async () => {
    const t = trackedChunks((b) => ({ part: { case: "chunk", value: b } }));
    async function* requests(): AsyncIterable<UploadRequest> {
      yield {
        part: {
          case: "header",
          value: { filename: "big.pdf", declaredMimeType: "application/pdf", sha256: "", documentId: "" },
        },
      } as UploadRequest;
      yield* t.source() as AsyncIterable<UploadRequest>;
    }
    const file = await receiveUpload(requests(), store, {
      maxBytes: 1024 * 1024 * 1024,
      signal: new AbortController().signal,
      authorize: async () => undefined,
      discard: async () => undefined,
    });
    expect(file.blob.size).toBe(CHUNK * CHUNKS);
    expect(t.aliveEarly()).toBeGreaterThanOrEqual(0);
    expect(t.aliveEarly()).toBeLessThanOrEqual(2);
  });
});
