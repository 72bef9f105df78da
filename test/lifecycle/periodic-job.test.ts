import { describe, expect, it } from "vitest";
import { periodicJob } from "../../platform/lifecycle/periodic-job.js";

describe("periodicJob", () => {
  it("never overlaps runs, whoever asks for them", async () => {
    let running = 0;
    let most = 0;
    const job = periodicJob(
      async () => {
        most = Math.max(most, ++running);
        await new Promise((r) => setTimeout(r, 5));
        running--;
        return running;
      },
      () => {},
    );
    await Promise.all([job.run(), job.run(), job.run()]);
    expect(most).toBe(1);
  });

  it("reports a failed run and goes on with the next", async () => {
    const failures: unknown[] = [];
    let calls = 0;
    const job = periodicJob(
      async () => {
        if (++calls === 1) throw new Error("first run fails");
        return calls;
      },
      (err) => failures.push(err),
    );
    job.start(1);
    await expect.poll(() => calls, { timeout: 5_000 }).toBeGreaterThanOrEqual(2);
    await job.stop();
    expect(failures).toHaveLength(1);
    expect((failures[0] as Error).message).toBe("first run fails");
  });

  it("stop waits for the run under way and no run starts after it", async () => {
    let finished = false;
    let calls = 0;
    const job = periodicJob(
      async () => {
        calls++;
        await new Promise((r) => setTimeout(r, 20));
        finished = true;
      },
      () => {},
    );
    job.start(1);
    await expect.poll(() => calls, { timeout: 5_000 }).toBeGreaterThanOrEqual(1);
    await job.stop();
    expect(finished).toBe(true);
    const after = calls;
    await new Promise((r) => setTimeout(r, 30));
    expect(calls).toBe(after);
  });
});
