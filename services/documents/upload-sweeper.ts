import { periodicJob } from "../../platform/lifecycle/periodic-job.js";
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
  const job = periodicJob(
    async () => ({ expired: await expired(), orphans: await orphans() }),
    (err) => logger.warn("sweeping expired uploads failed; will try again", { error: (err as Error).message }),
  );
  return { sweep: job.run, start: job.start, stop: job.stop };
}
