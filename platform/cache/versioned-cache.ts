import { Redis } from "ioredis";

/**
 * A cache of computed answers whose validity ends all at once: each namespace has a version, and
 * bumping it makes every entry written under an older version unreachable (they expire by TTL).
 * Invalidation is one increment, never a scan of keys.
 *
 * A reader takes the version with its lookup and writes its answer under that version, so an
 * answer computed while the data changed is stored under the old version and never served.
 */
export interface VersionedCache {
  /** The namespace's current version and the entry stored under it, if any. */
  get(namespace: string, key: string): Promise<{ version: string; value: string | undefined }>;
  /** Stores under the version `get` returned; a bump since makes this a no-op in effect. */
  set(namespace: string, version: string, key: string, value: string, ttlMs: number): Promise<void>;
  /** Invalidates every entry of the namespace. */
  bump(namespace: string): Promise<void>;
  stats(): { hits: number; misses: number; errors: number };
  close(): Promise<void>;
}

// One round trip: the version and the entry under it.
const GET = `
local v = redis.call('GET', KEYS[1]) or '0'
return {v, redis.call('GET', ARGV[1] .. v .. ':' .. ARGV[2])}
`;

/** Shared by every replica on the same Redis: a bump by one is seen by all. */
export function redisVersionedCache(url: string, prefix = "medmesh:cache:"): VersionedCache {
  const redis = new Redis(url, { maxRetriesPerRequest: 1, enableOfflineQueue: true });
  // A broken Redis must not crash the process; calls then fail and the caller computes afresh.
  redis.on("error", () => undefined);
  redis.defineCommand("medmeshVersionedGet", { numberOfKeys: 1, lua: GET });
  const counts = { hits: 0, misses: 0, errors: 0 };
  const versionKey = (ns: string) => `${prefix}${ns}:version`;
  const entryPrefix = (ns: string) => `${prefix}${ns}:e:`;
  return {
    async get(namespace, key) {
      const [version, value] = (await (
        redis as unknown as { medmeshVersionedGet(...a: unknown[]): Promise<[string, string | null]> }
      ).medmeshVersionedGet(versionKey(namespace), entryPrefix(namespace), key)) as [string, string | null];
      if (value === null) counts.misses++;
      else counts.hits++;
      return { version, value: value ?? undefined };
    },
    async set(namespace, version, key, value, ttlMs) {
      await redis.set(`${entryPrefix(namespace)}${version}:${key}`, value, "PX", ttlMs);
    },
    async bump(namespace) {
      await redis.incr(versionKey(namespace));
    },
    stats: () => ({ ...counts }),
    async close() {
      redis.disconnect();
    },
  };
}

/** For one process (no REDIS_URL): the same contract in memory, the oldest entries dropped beyond `maxEntries`. */
export function memoryVersionedCache(maxEntries = 10_000): VersionedCache {
  const versions = new Map<string, number>();
  const entries = new Map<string, { value: string; expires: number }>();
  const counts = { hits: 0, misses: 0, errors: 0 };
  const versionOf = (ns: string) => String(versions.get(ns) ?? 0);
  return {
    async get(namespace, key) {
      const version = versionOf(namespace);
      const k = `${namespace}\u0000${version}\u0000${key}`;
      const e = entries.get(k);
      if (e && e.expires > Date.now()) {
        counts.hits++;
        return { version, value: e.value };
      }
      if (e) entries.delete(k);
      counts.misses++;
      return { version, value: undefined };
    },
    async set(namespace, version, key, value, ttlMs) {
      if (version !== versionOf(namespace)) return;
      const k = `${namespace}\u0000${version}\u0000${key}`;
      entries.delete(k);
      entries.set(k, { value, expires: Date.now() + ttlMs });
      // Insertion order is age order: the first keys are the oldest.
      while (entries.size > maxEntries) entries.delete(entries.keys().next().value!);
    },
    async bump(namespace) {
      // Entries of older versions are never read again; they age out of the bounded map.
      versions.set(namespace, (versions.get(namespace) ?? 0) + 1);
    },
    stats: () => ({ ...counts }),
    async close() {
      entries.clear();
    },
  };
}
