/**
 * Background housekeeping (sweeping, reconciling) that a timer and a caller (a test, an operator
 * command) may both ask for: runs never overlap, a failed run is reported and the next one goes
 * ahead, and stopping waits for the run under way so shutdown never cuts one in half.
 */
export interface PeriodicJob<T> {
  /** Runs once, after any run under way. */
  run(): Promise<T>;
  /** Runs every `intervalMs` in the background; 0 never. A second start is ignored. */
  start(intervalMs: number): void;
  /** Stops the timer and waits for a run under way. */
  stop(): Promise<void>;
}

export function periodicJob<T>(work: () => Promise<T>, onFailure: (err: unknown) => void): PeriodicJob<T> {
  let timer: NodeJS.Timeout | undefined;
  let last: Promise<unknown> = Promise.resolve();
  const run = (): Promise<T> => {
    const next = last.then(work);
    last = next.catch(() => undefined);
    return next;
  };
  return {
    run,
    start(intervalMs) {
      if (intervalMs <= 0 || timer) return;
      timer = setInterval(() => run().catch(onFailure), intervalMs);
      // Housekeeping never keeps a process alive on its own.
      timer.unref();
    },
    async stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
      await last;
    },
  };
}
