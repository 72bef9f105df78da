import { Redis } from "ioredis";
import { trackInvalidations, type InvalidationFeed, type InvalidationFeedOptions } from "./redis-invalidations.js";

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
  /**
   * The entry, if this process holds a copy it knows to be current: no round trip, no promise.
   * Undefined means ask `get` (which may still find it).
   */
  peek?(namespace: string, key: string): string | undefined;
  stats(): { hits: number; misses: number; errors: number };
  close(): Promise<void>;
}

// One round trip: the version, the entry under it and how long the entry has left.
const GET = `
local v = redis.call('GET', KEYS[1]) or '0'
local k = ARGV[1] .. v .. ':' .. ARGV[2]
local value = redis.call('GET', k)
if not value then return {v} end
return {v, value, redis.call('PTTL', k)}
`;

export interface RedisCacheOptions {
  prefix?: string;
  /** The connections' client names in Redis (CLIENT LIST), the invalidation feed's with ":invalidations". */
  name?: string;
  /** How often the invalidation feed is checked for life (redis-invalidations.ts). */
  heartbeatMs?: number;
  /**
   * Keep copies of entries in process, served without a round trip for as long as Redis' own
   * invalidation reports (redis-invalidations.ts) say they are current: at most this many. For
   * small entries read far more often than they change (a device's state); unset keeps none.
   */
  near?: { maxEntries: number };
}

/** Shared by every replica on the same Redis: a bump by one is seen by all. */
export function redisVersionedCache(url: string, opts: RedisCacheOptions = {}): VersionedCache {
  const prefix = opts.prefix ?? "medmesh:cache:";
  const name = opts.name ?? "medmesh-cache";
  const redis = new Redis(url, { maxRetriesPerRequest: 1, enableOfflineQueue: true, connectionName: name });
  // A broken Redis must not crash the process; calls then fail and the caller computes afresh.
  redis.on("error", () => undefined);
  redis.defineCommand("medmeshVersionedGet", { numberOfKeys: 1, lua: GET });
  const counts = { hits: 0, misses: 0, errors: 0 };
  const versionKey = (ns: string) => `${prefix}${ns}:version`;
  const entryPrefix = (ns: string) => `${prefix}${ns}:e:`;
  const near = opts.near
    ? new NearCopies(
        { url, data: redis, prefix, name: `${name}:invalidations`, heartbeatMs: opts.heartbeatMs },
        opts.near.maxEntries,
      )
    : undefined;
  const fetch = (redis as unknown as { medmeshVersionedGet(...a: unknown[]): Promise<[string, string?, number?]> })
    .medmeshVersionedGet;
  return {
    peek(namespace, key) {
      const value = near?.get(versionKey(namespace), entryPrefix(namespace), key);
      if (value !== undefined) counts.hits++;
      return value;
    },
    async get(namespace, key) {
      // Copies are answered by peek; a caller that asks here wants Redis' own answer.
      const vk = versionKey(namespace);
      const ticket = near?.asking(vk);
      let reply: [string, string?, number?];
      let stale = false;
      try {
        reply = await fetch.call(redis, vk, entryPrefix(namespace), key);
      } finally {
        if (ticket) stale = near!.answered(vk);
      }
      const [version, value, pttl] = reply;
      if (ticket && !stale)
        near!.learn(
          ticket,
          vk,
          version,
          value !== undefined ? `${entryPrefix(namespace)}${version}:${key}` : undefined,
          value,
          pttl,
        );
      if (value === undefined) counts.misses++;
      else counts.hits++;
      return { version, value };
    },
    async set(namespace, version, key, value, ttlMs) {
      const entryKey = `${entryPrefix(namespace)}${version}:${key}`;
      await redis.set(entryKey, value, "PX", ttlMs);
      near?.stored(versionKey(namespace), version, entryKey, value, ttlMs);
    },
    async bump(namespace) {
      const vk = versionKey(namespace);
      near?.drop(vk);
      await redis.incr(vk);
      // A read that came back between the drop and the increment may have kept the old version.
      near?.drop(vk);
    },
    stats: () => ({ ...counts }),
    async close() {
      near?.close();
      redis.disconnect();
    },
  };
}

/** A read sent while the feed was live: which stretch of liveness (epoch) it belongs to. */
interface Ticket {
  epoch: number;
}

/**
 * The in-process copies of a Redis versioned cache: namespace versions and entries as Redis last
 * gave them, kept while the invalidation feed is live. A copy is only ever made from Redis' own
 * answer (a read, or a store this process made under a version it holds), and a report that a
 * version key changed drops it. A read whose namespace was reported changed while the read was
 * in flight keeps nothing: the report and the answer come over different connections, and the
 * answer may be the older of the two.
 */
class NearCopies {
  private readonly versions = new Map<string, string>();
  private readonly entries = new Map<string, { value: string; expires: number }>();
  /** Reads in flight per version key, and the version keys reported changed while some were. */
  private readonly inflight = new Map<string, number>();
  private readonly changedInFlight = new Set<string>();
  private epoch = 0;
  private readonly feed: InvalidationFeed;

  constructor(
    feed: InvalidationFeedOptions,
    private readonly maxEntries: number,
  ) {
    this.feed = trackInvalidations(feed, {
      changed: (keys) => {
        for (const k of keys) this.drop(k);
      },
      lost: () => this.forget(),
    });
  }

  get(versionKey: string, entryPrefix: string, key: string): string | undefined {
    if (!this.feed.live) return undefined;
    const version = this.versions.get(versionKey);
    if (version === undefined) return undefined;
    const e = this.entries.get(`${entryPrefix}${version}:${key}`);
    if (e === undefined || e.expires <= Date.now()) return undefined;
    return e.value;
  }

  asking(versionKey: string): Ticket | undefined {
    if (!this.feed.live) return undefined;
    this.inflight.set(versionKey, (this.inflight.get(versionKey) ?? 0) + 1);
    return { epoch: this.epoch };
  }

  /** A read came back; true when its namespace was reported changed while it was out. */
  answered(versionKey: string): boolean {
    const stale = this.changedInFlight.has(versionKey);
    const n = this.inflight.get(versionKey) ?? 1;
    if (n > 1) this.inflight.set(versionKey, n - 1);
    else {
      this.inflight.delete(versionKey);
      this.changedInFlight.delete(versionKey);
    }
    return stale;
  }

  /** Keeps what a read returned (one `answered` found fresh), unless the feed was lost since it was sent. */
  learn(
    ticket: Ticket,
    versionKey: string,
    version: string,
    entryKey: string | undefined,
    value: string | undefined,
    pttl: number | undefined,
  ): void {
    if (ticket.epoch !== this.epoch || !this.feed.live) return;
    this.remember(this.versions, versionKey, version);
    // PTTL is -1 for an entry without expiry; the cache never writes one, but a copy must still end.
    if (entryKey !== undefined && value !== undefined && pttl !== undefined && pttl > 0)
      this.remember(this.entries, entryKey, { value, expires: Date.now() + pttl });
  }

  /** This process stored an entry: keep it if it is under the version held (a bump since dropped that). */
  stored(versionKey: string, version: string, entryKey: string, value: string, ttlMs: number): void {
    if (!this.feed.live || this.versions.get(versionKey) !== version) return;
    this.remember(this.entries, entryKey, { value, expires: Date.now() + ttlMs });
  }

  /** A key changed: a version key takes its namespace's copies with it, an entry key only itself. */
  drop(key: string): void {
    if (this.inflight.has(key)) this.changedInFlight.add(key);
    if (!this.versions.delete(key)) this.entries.delete(key);
  }

  private forget(): void {
    this.epoch++;
    this.versions.clear();
    this.entries.clear();
    this.changedInFlight.clear();
  }

  private remember<V>(map: Map<string, V>, key: string, value: V): void {
    map.delete(key);
    map.set(key, value);
    // Insertion order is age order; entries of old versions are never read again and age out here.
    if (map.size > this.maxEntries) map.delete(map.keys().next().value!);
  }

  close(): void {
    this.feed.close();
    this.forget();
  }
}

/** For one process (no REDIS_URL): the same contract in memory, the oldest entries dropped beyond `maxEntries`. */
export function memoryVersionedCache(maxEntries = 10_000): VersionedCache {
  const versions = new Map<string, number>();
  const entries = new Map<string, { value: string; expires: number }>();
  const counts = { hits: 0, misses: 0, errors: 0 };
  const versionOf = (ns: string) => String(versions.get(ns) ?? 0);
  const entryKey = (ns: string, version: string, key: string) => `${ns}\u0000${version}\u0000${key}`;
  return {
    peek(namespace, key) {
      const e = entries.get(entryKey(namespace, versionOf(namespace), key));
      if (e === undefined || e.expires <= Date.now()) return undefined;
      counts.hits++;
      return e.value;
    },
    async get(namespace, key) {
      const version = versionOf(namespace);
      const k = entryKey(namespace, version, key);
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
      const k = entryKey(namespace, version, key);
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
