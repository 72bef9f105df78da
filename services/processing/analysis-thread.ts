import { parentPort } from "node:worker_threads";
import { analyzeDocument } from "./extract/index.js";

/** One job of the analysis pool (analysis.ts); the thread takes them one at a time. */
export interface AnalysisJob {
  id: number;
  bytes: Uint8Array;
  declaredMime?: string;
  maxBytes: number;
}

parentPort!.on("message", (job: AnalysisJob) => {
  analyzeDocument({ bytes: job.bytes, declaredMime: job.declaredMime }, { maxBytes: job.maxBytes }).then(
    (result) => parentPort!.postMessage({ id: job.id, result }),
    // analyzeDocument answers bad input with a typed failure; anything thrown is a bug or a
    // resource problem, reported to the pool as an error so the event is retried.
    (err: unknown) => parentPort!.postMessage({ id: job.id, error: err instanceof Error ? err.message : String(err) }),
  );
});
