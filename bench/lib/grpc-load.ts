import { Code, ConnectError } from "@connectrpc/connect";

export interface ClosedLoopOptions {
  /** Calls kept in flight at all times: each worker starts its next call when its last one ends. */
  concurrency: number;
  warmupMs: number;
  durationMs: number;
  /** Largest time to wait for calls still in flight when the measured window closes. */
  drainMs?: number;
}

export interface LoadResult {
  /** Successful calls that completed inside the measured window. */
  ok: number;
  /** Failed calls inside the window, by status name. */
  errors: Record<string, number>;
  /** Latencies of the successful calls in the window, milliseconds, sorted ascending. */
  latenciesMs: Float64Array;
  windowSeconds: number;
}

/**
 * Closed-loop load: `concurrency` workers call back to back for warm-up plus duration. Only calls
 * that complete inside the measured window count, so the warm-up's cold JIT and connection setup
 * stay out of the figures; a call straddling the window start counts with its full latency.
 */
export async function closedLoop(call: () => Promise<unknown>, opts: ClosedLoopOptions): Promise<LoadResult> {
  const start = performance.now();
  const windowStart = start + opts.warmupMs;
  const windowEnd = windowStart + opts.durationMs;
  // Preallocated so recording a latency never allocates on the hot path.
  let latencies = new Float64Array(1 << 16);
  let ok = 0;
  const errors: Record<string, number> = {};

  async function worker() {
    while (performance.now() < windowEnd) {
      const t0 = performance.now();
      let failure: string | undefined;
      try {
        await call();
      } catch (err) {
        failure = err instanceof ConnectError ? Code[err.code] : (err as Error).name || "Error";
      }
      const t1 = performance.now();
      if (t1 < windowStart || t1 > windowEnd) continue;
      if (failure) {
        errors[failure] = (errors[failure] ?? 0) + 1;
        continue;
      }
      if (ok === latencies.length) {
        const grown = new Float64Array(latencies.length * 2);
        grown.set(latencies);
        latencies = grown;
      }
      latencies[ok++] = t1 - t0;
    }
  }

  const workers = Promise.all(Array.from({ length: opts.concurrency }, worker));
  let timer: NodeJS.Timeout | undefined;
  const bounded = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, opts.warmupMs + opts.durationMs + (opts.drainMs ?? 15_000));
  });
  await Promise.race([workers, bounded]);
  clearTimeout(timer);
  return { ok, errors, latenciesMs: latencies.slice(0, ok).sort(), windowSeconds: opts.durationMs / 1000 };
}
