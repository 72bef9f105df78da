import { randomUUID } from "node:crypto";
import { afterAll, describe, expect, it } from "vitest";
import { memoryRateLimiter, redisRateLimiter, type RateLimiter } from "../platform/cache/rate-limiter.js";

const limiters: Array<[string, () => RateLimiter]> = [["in-process", () => memoryRateLimiter()]];
if (process.env.REDIS_URL) limiters.push(["Redis", () => redisRateLimiter(process.env.REDIS_URL!)]);

describe.each(limiters)("token bucket (%s)", (_name, make) => {
  const limiter = make();
  afterAll(() => limiter.close());

  it("allows the burst, then refuses with a retry delay", async () => {
    const key = randomUUID();
    const rule = { capacity: 3, refillPerSecond: 0.5 };
    const results = [];
    for (let i = 0; i < 4; i++) results.push(await limiter.take(key, rule));
    expect(results.slice(0, 3).every((r) => r.allowed)).toBe(true);
    expect(results[3]!.allowed).toBe(false);
    // One token at 0.5/s takes about 2 s to come back.
    expect(results[3]!.retryAfterMs).toBeGreaterThan(1_000);
    expect(results[3]!.retryAfterMs).toBeLessThanOrEqual(2_000);
  });

  it("keeps keys apart", async () => {
    const rule = { capacity: 1, refillPerSecond: 0.1 };
    const [a, b] = [randomUUID(), randomUUID()];
    expect((await limiter.take(a, rule)).allowed).toBe(true);
    expect((await limiter.take(a, rule)).allowed).toBe(false);
    expect((await limiter.take(b, rule)).allowed).toBe(true);
  });

  it("refills over time", async () => {
    const key = randomUUID();
    const rule = { capacity: 1, refillPerSecond: 50 };
    expect((await limiter.take(key, rule)).allowed).toBe(true);
    expect((await limiter.take(key, rule)).allowed).toBe(false);
    await new Promise((r) => setTimeout(r, 100));
    expect((await limiter.take(key, rule)).allowed).toBe(true);
  });

  it("is consistent under concurrent takes: exactly the capacity is granted", async () => {
    const key = randomUUID();
    const rule = { capacity: 10, refillPerSecond: 0.001 };
    const results = await Promise.all(Array.from({ length: 50 }, () => limiter.take(key, rule)));
    expect(results.filter((r) => r.allowed)).toHaveLength(10);
  });
});

describe("in-process limiter memory", () => {
  it("forgets the least recently used keys beyond its bound", async () => {
    const limiter = memoryRateLimiter(2);
    const rule = { capacity: 1, refillPerSecond: 0.001 };
    await limiter.take("a", rule);
    await limiter.take("b", rule);
    await limiter.take("c", rule); // evicts "a"
    expect((await limiter.take("a", rule)).allowed).toBe(true); // a fresh bucket again
    expect((await limiter.take("c", rule)).allowed).toBe(false);
  });

  it("answers at once from the same buckets take draws from", async () => {
    const limiter = memoryRateLimiter();
    const rule = { capacity: 2, refillPerSecond: 0.001 };
    expect(limiter.takeNow!("k", rule)).toMatchObject({ allowed: true, remaining: 1 });
    expect((await limiter.take("k", rule)).allowed).toBe(true);
    const refused = limiter.takeNow!("k", rule);
    expect(refused.allowed).toBe(false);
    expect(refused.retryAfterMs).toBeGreaterThan(0);
  });
});
