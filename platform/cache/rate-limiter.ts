import { Redis } from "ioredis";

export interface BucketRule {
  /** Tokens a full bucket holds: the burst a caller may spend at once. */
  capacity: number;
  /** Tokens added per second. */
  refillPerSecond: number;
}

export interface Decision {
  allowed: boolean;
  /** When refused: how long until one token is available again. */
  retryAfterMs: number;
  remaining: number;
}

export interface RateLimiter {
  take(key: string, rule: BucketRule, cost?: number): Promise<Decision>;
  /**
   * The same decision at once, from a limiter that needs no round trip (process memory): a
   * caller on a hot path then spends no promise on it. Absent where the bucket lives elsewhere.
   */
  takeNow?(key: string, rule: BucketRule, cost?: number): Decision;
  close(): Promise<void>;
}

// The whole refill-and-take happens inside Redis so concurrent gateways and services share one
// bucket per key without races. Time comes from Redis too, so hosts with skewed clocks agree.
const TAKE = `
local key = KEYS[1]
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', key, 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + (now - at) * rate / 1000)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', key, 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', key, math.ceil(capacity * 1000 / rate) + 1000)
return {allowed, wait, math.floor(tokens)}
`;

/** A token bucket per key in Redis, shared by every process that talks to the same Redis. */
export function redisRateLimiter(url: string, prefix = "medmesh:rl:"): RateLimiter {
  const redis = new Redis(url, { lazyConnect: false, maxRetriesPerRequest: 2, enableOfflineQueue: true });
  // A broken Redis must not crash the process; take() then fails and the caller decides.
  redis.on("error", () => undefined);
  redis.defineCommand("medmeshTake", { numberOfKeys: 1, lua: TAKE });
  return {
    async take(key, rule, cost = 1) {
      const [allowed, wait, remaining] = (await (
        redis as unknown as { medmeshTake(...a: unknown[]): Promise<number[]> }
      ).medmeshTake(prefix + key, rule.capacity, rule.refillPerSecond, cost)) as [number, number, number];
      return { allowed: allowed === 1, retryAfterMs: wait, remaining };
    },
    async close() {
      await redis.quit().catch(() => redis.disconnect());
    },
  };
}

/**
 * The same bucket in process memory, for the embedded default and single-instance runs.
 * Idle buckets are dropped so a flood of distinct keys (say, spoofed IPs) cannot grow it forever.
 */
export function memoryRateLimiter(maxKeys = 100_000): RateLimiter {
  const buckets = new Map<string, { tokens: number; at: number }>();
  const takeNow = (key: string, rule: BucketRule, cost = 1): Decision => {
    const now = performance.now();
    const b = buckets.get(key) ?? { tokens: rule.capacity, at: now };
    b.tokens = Math.min(rule.capacity, b.tokens + ((now - b.at) * rule.refillPerSecond) / 1000);
    b.at = now;
    buckets.delete(key);
    buckets.set(key, b); // re-insert: Map order is then least recently used first
    if (buckets.size > maxKeys) buckets.delete(buckets.keys().next().value!);
    if (b.tokens >= cost) {
      b.tokens -= cost;
      return { allowed: true, retryAfterMs: 0, remaining: Math.floor(b.tokens) };
    }
    return {
      allowed: false,
      retryAfterMs: Math.ceil(((cost - b.tokens) * 1000) / rule.refillPerSecond),
      remaining: 0,
    };
  };
  return {
    async take(key, rule, cost) {
      return takeNow(key, rule, cost);
    },
    takeNow,
    async close() {
      buckets.clear();
    },
  };
}

/** Redis when REDIS_URL is set, process memory otherwise. */
export function createRateLimiter(redisUrl: string | undefined): RateLimiter {
  return redisUrl ? redisRateLimiter(redisUrl) : memoryRateLimiter();
}
