import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import type { AnalysisJob } from "./analysis-thread.js";
import type { DocumentAnalysis, ExtractionFailure } from "./extract/index.js";

export type Analysis = DocumentAnalysis | ExtractionFailure;

export interface AnalysisPoolOptions {
  /** Threads at most; one document per thread at a time. */
  size: number;
  /** A document still being analysed after this long has its thread terminated. */
  timeoutMs: number;
  /** Passed to analyzeDocument: larger inputs are a too_large failure. */
  maxBytes: number;
  /**
   * The JavaScript heap of each thread, in MiB (V8's old generation). A document that needs more
   * fails its try with AnalysisOutOfMemoryError and its thread is replaced; without a limit of its
   * own a thread shares the process's, and running out of it aborts the whole process.
   */
  maxHeapMb: number;
}

export interface AnalysisPool {
  analyze(bytes: Uint8Array, declaredMime?: string): Promise<Analysis>;
  /** Terminates every thread; jobs still running fail. */
  close(): Promise<void>;
}

export class AnalysisTimeoutError extends Error {
  constructor(ms: number) {
    super(`the analysis did not finish within ${ms} ms; its thread was stopped`);
    this.name = "AnalysisTimeoutError";
  }
}

export class AnalysisOutOfMemoryError extends Error {
  constructor(mb: number) {
    super(`the analysis needed more than its ${mb} MiB of memory; its thread was stopped`);
    this.name = "AnalysisOutOfMemoryError";
  }
}

interface Slot {
  worker: Worker;
  /** The job the thread is on, if any; a thread takes one at a time. */
  job?: { id: number; resolve(a: Analysis): void; reject(err: Error): void };
}

// The threads run the TypeScript sources the way the process does (tsx), registered per thread:
// a worker does not inherit the main thread's module hooks.
const tsxApi = tsxEsmApi();
const threadUrl = new URL("./analysis-thread.ts", import.meta.url).href;
const bootstrap = `import(${JSON.stringify(tsxApi)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(threadUrl)}); });`;

/**
 * tsx's ESM register API as an absolute URL, found from here rather than from the working
 * directory (which is wherever the process was started). require.resolve would pick its CommonJS
 * build, which cannot load the hooks inside a worker.
 */
function tsxEsmApi(): string {
  const manifest = createRequire(import.meta.url).resolve("tsx/package.json");
  const pkg = JSON.parse(readFileSync(manifest, "utf8")) as {
    exports: Record<string, { import: { default: string } }>;
  };
  return pathToFileURL(path.join(path.dirname(manifest), pkg.exports["./esm/api"]!.import.default)).href;
}

/**
 * Runs analyzeDocument in worker threads. pdf.js has no time limit of its own, and a hostile or
 * pathological PDF can keep it busy for minutes or exhaust memory; on the main thread that would
 * stop the Kafka heartbeats, the health server and every other partition with it. In a thread the
 * main loop stays free, and a document over its time limit is stopped by terminating its thread.
 * Threads are kept between documents: starting one (tsx, pdf.js) costs about half a second.
 */
export function startAnalysisPool(opts: AnalysisPoolOptions): AnalysisPool {
  const slots: Slot[] = [];
  const waiting: Array<(slot: Slot) => void> = [];
  const reserved = new Set<Slot>();
  let nextId = 1;
  let closed = false;

  function spawn(): Slot {
    const slot: Slot = {
      worker: new Worker(bootstrap, { eval: true, resourceLimits: { maxOldGenerationSizeMb: opts.maxHeapMb } }),
    };
    slot.worker.on("message", (m: { id: number; result?: Analysis; error?: string }) => {
      const job = slot.job;
      if (!job || job.id !== m.id) return;
      slot.job = undefined;
      if (m.error !== undefined) job.reject(new Error(`analysis failed: ${m.error}`));
      else job.resolve(m.result!);
    });
    // A crash (out of memory, a bug at load time) takes the thread's job with it, never the process.
    slot.worker.on("error", (err: Error & { code?: string }) => {
      slot.job?.reject(
        err.code === "ERR_WORKER_OUT_OF_MEMORY"
          ? new AnalysisOutOfMemoryError(opts.maxHeapMb)
          : new Error(`the analysis thread failed: ${err.message}`),
      );
      slot.job = undefined;
    });
    slot.worker.on("exit", (code) => {
      slot.job?.reject(new Error(`the analysis thread exited with code ${code}`));
      slot.job = undefined;
      // A thread that died between jobs must not be handed the next one: it would never answer.
      if (!reserved.has(slot) && slots.includes(slot)) slots.splice(slots.indexOf(slot), 1);
    });
    slots.push(slot);
    return slot;
  }

  function acquire(): Promise<Slot> {
    const idle = slots.find((s) => !reserved.has(s));
    const slot = idle ?? (slots.length < opts.size ? spawn() : undefined);
    if (slot) {
      reserved.add(slot);
      return Promise.resolve(slot);
    }
    return new Promise((resolve) => waiting.push(resolve));
  }

  /** Hands the thread to the next waiter, or a fresh one in its place when it must not be reused. */
  function release(slot: Slot, reusable: boolean) {
    reserved.delete(slot);
    let next: Slot | undefined = slot;
    if (!reusable) {
      slots.splice(slots.indexOf(slot), 1);
      void slot.worker.terminate();
      next = undefined;
    }
    const waiter = closed ? undefined : waiting.shift();
    if (!waiter) return;
    next ??= spawn();
    reserved.add(next);
    waiter(next);
  }

  return {
    async analyze(bytes, declaredMime) {
      if (closed) throw new Error("the analysis pool is closed");
      const slot = await acquire();
      const id = nextId++;
      let timer: NodeJS.Timeout | undefined;
      let reusable = true;
      try {
        return await new Promise<Analysis>((resolve, reject) => {
          slot.job = { id, resolve, reject };
          timer = setTimeout(() => {
            slot.job = undefined;
            reject(new AnalysisTimeoutError(opts.timeoutMs));
          }, opts.timeoutMs);
          const job: AnalysisJob = { id, bytes, declaredMime, maxBytes: opts.maxBytes };
          // Handed over rather than copied when the bytes own their whole buffer.
          const whole =
            bytes.byteOffset === 0 &&
            bytes.buffer instanceof ArrayBuffer &&
            bytes.byteLength === bytes.buffer.byteLength;
          slot.worker.postMessage(job, whole ? [bytes.buffer as ArrayBuffer] : []);
        });
      } catch (err) {
        // After a timeout or a crash the thread may still be inside pdf.js, or gone: never reuse it.
        reusable = false;
        throw err;
      } finally {
        clearTimeout(timer);
        if (slots.includes(slot)) release(slot, reusable && !closed);
      }
    },
    async close() {
      closed = true;
      for (const s of slots) s.job?.reject(new Error("the analysis pool is closed"));
      await Promise.all(slots.splice(0).map((s) => s.worker.terminate()));
    },
  };
}
