import { logger } from "../../platform/telemetry/logger.js";
import type { UploadSessionStore } from "./upload-sessions.js";
import type { UploadStaging } from "./upload-staging.js";

export interface UploadSweeper {
  /**
   * Removes expired sessions (open or completed) with their staging files, then staging files no
   * session owns (left by a crash between the two).
   */
  sweep(): Promise<{ expired: number; orphans: number }>;
  /** Sweeps every `intervalMs` in the background; 0 never. */
  start(intervalMs: number): void;
  /** Stops the timer and waits for a sweep under way. */
  stop(): Promise<void>;
}

const SWEEP_BATCH = 500;

export function uploadSweeper(opts: { sessions: UploadSessionStore; staging: UploadStaging }): UploadSweeper {
  const { sessions, staging } = opts;
  let timer: NodeJS.Timeout | undefined;
  let last: Promise<unknown> = Promise.resolve();

  async function expired(): Promise<number> {
    let removed = 0;
    for (;;) {
      const ids = await sessions.removeExpired(SWEEP_BATCH);
      await Promise.all(ids.map((id) => staging.remove(id)));
      removed += ids.length;
      if (ids.length < SWEEP_BATCH) return removed;
    }
  }

  async function orphans(): Promise<number> {
    const ids = await staging.ids();
    let removed = 0;
    for (let i = 0; i < ids.length; i += SWEEP_BATCH) {
      const batch = ids.slice(i, i + SWEEP_BATCH);
      const alive = await sessions.existing(batch);
      for (const id of batch) {
        if (alive.has(id)) continue;
        await staging.remove(id);
        removed++;
      }
    }
    return removed;
  }

  // One sweep at a time, whether the timer or a caller asked for it.
  function sweep(): Promise<{ expired: number; orphans: number }> {
    const run = last.then(async () => ({ expired: await expired(), orphans: await orphans() }));
    last = run.catch(() => undefined);
    return run;
  }

  return {
    sweep,
    start(intervalMs) {
      if (intervalMs <= 0 || timer) return;
      timer = setInterval(() => {
        sweep().catch((err: unknown) =>
          logger.warn("sweeping expired uploads failed; will try again", { error: (err as Error).message }),
        );
      }, intervalMs);
      timer.unref();
    },
    async stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
      await last;
    },
  };
}
