import { describe, expect, it } from "vitest";
import { SerialQueue } from "../../platform/lifecycle/serial-queue.js";

const tick = () => new Promise((r) => setTimeout(r, 5));

describe("SerialQueue", () => {
  it("runs work on one key one at a time, in arrival order, and other keys alongside", async () => {
    const queue = new SerialQueue();
    const log: string[] = [];
    const job = (key: string, name: string) =>
      queue.run(key, async () => {
        log.push(`${name} start`);
        await tick();
        log.push(`${name} end`);
        return name;
      });
    const results = await Promise.all([job("a", "a1"), job("a", "a2"), job("b", "b1")]);
    expect(results).toEqual(["a1", "a2", "b1"]);
    expect(log.indexOf("a2 start")).toBeGreaterThan(log.indexOf("a1 end"));
    expect(log.indexOf("b1 start")).toBeLessThan(log.indexOf("a1 end"));
  });

  it("goes on after a failure, which only its own caller hears of", async () => {
    const queue = new SerialQueue();
    const failed = queue.run("k", async () => {
      await tick();
      throw new Error("boom");
    });
    const next = queue.run("k", async () => "after");
    await expect(failed).rejects.toThrow("boom");
    await expect(next).resolves.toBe("after");
  });
});
