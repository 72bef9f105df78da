import { afterAll, describe, expect, it } from "vitest";
import { AnalysisOutOfMemoryError, startAnalysisPool } from "./analysis.js";

const text = (s: string) => new TextEncoder().encode(s);
const letter = "Aspirin reduced the risk of ischaemic stroke in the trial; metformin was continued.\n";

describe("analysis threads", () => {
  // A heap small enough for an ordinary letter but not for ~20 MB of text, whose string copies
  // (decoded, normalised, split into words) need several times that.
  const pool = startAnalysisPool({ size: 1, timeoutMs: 60_000, maxBytes: 100 * 1024 * 1024, maxHeapMb: 64 });
  afterAll(() => pool.close());

  it("fail the try of a document that outgrows the thread's heap, and go on with a fresh thread", async () => {
    expect((await pool.analyze(text(letter.repeat(20)))).ok).toBe(true);

    const err = await pool.analyze(text(letter.repeat(250_000))).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AnalysisOutOfMemoryError);
    expect((err as Error).message).toMatch(/more than its 64 MiB of memory/);

    // The process is still here (this test runs in it), and the next document gets a new thread.
    const after = await pool.analyze(text(letter.repeat(20)));
    expect(after.ok).toBe(true);
  }, 60_000);
});
