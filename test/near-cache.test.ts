import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { Redis } from "ioredis";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { redisVersionedCache, type VersionedCache } from "../platform/cache/versioned-cache.js";
import { eventually } from "./support/eventually.js";
import { freePort } from "./support/embedded-mesh.js";

// Copies of Redis entries kept in process (platform/cache/versioned-cache.ts NearCopies), kept
// current by Redis' invalidation reports (platform/cache/redis-invalidations.ts). Two caches on
// one Redis stand for two replicas of a service.

const url = process.env.REDIS_URL;
const hasRedisServer = spawnSync("redis-server", ["--version"]).status === 0;

const open: VersionedCache[] = [];
let replicas = 0;
/** A cache whose Redis connections are named `near-test-<n>` and `near-test-<n>:invalidations`. */
function replica(redisUrl: string, prefix: string, heartbeatMs = 200) {
  const c = redisVersionedCache(redisUrl, {
    prefix,
    name: `near-test-${process.pid}-${++replicas}`,
    near: { maxEntries: 1_000 },
    heartbeatMs,
  });
  open.push(c);
  return c;
}
afterEach(async () => {
  await Promise.all(open.splice(0).map((c) => c.close()));
});

/** Reads through the cache as a service does: a copy, else Redis, storing `load()` on a miss. */
async function readThrough(c: VersionedCache, ns: string, load: () => string): Promise<string> {
  const held = c.peek!(ns, "k");
  if (held !== undefined) return held;
  const found = await c.get(ns, "k");
  if (found.value !== undefined) return found.value;
  const value = load();
  await c.set(ns, found.version, "k", value, 60_000);
  return value;
}

const copyOf = (c: VersionedCache, ns: string) => async () => c.peek!(ns, "k");
const noCopy = (c: VersionedCache, ns: string) => async () => (c.peek!(ns, "k") === undefined ? true : undefined);

describe.skipIf(!url)("the Redis versioned cache without copies (search's answer cache)", () => {
  it("stores under the version read, and a bump makes every entry of the namespace unreachable", async () => {
    const c = redisVersionedCache(url!, { prefix: `t${randomUUID()}:` });
    open.push(c);
    const miss = await c.get("ns", "q");
    expect(miss).toEqual({ version: "0", value: undefined });
    await c.set("ns", miss.version, "q", "answer", 60_000);
    expect(await c.get("ns", "q")).toEqual({ version: "0", value: "answer" });
    // Nothing is kept in process without copies: peek always says "ask".
    expect(c.peek!("ns", "q")).toBeUndefined();
    await c.bump("ns");
    expect(await c.get("ns", "q")).toEqual({ version: "1", value: undefined });
    // A store under the old version (a reader that started before the bump) is never served.
    await c.set("ns", "0", "q", "stale", 60_000);
    expect((await c.get("ns", "q")).value).toBeUndefined();
    expect(c.stats()).toMatchObject({ hits: 1, misses: 3 });
  });
});

describe.skipIf(!url)("near copies of a Redis cache", () => {
  it("serves a stored entry from the copy, and drops it when another replica bumps the namespace", async () => {
    const prefix = `t${randomUUID()}:`;
    const [a, b] = [replica(url!, prefix), replica(url!, prefix)];
    await eventually("both feeds live", async () => ((await isLive(a)) && (await isLive(b)) ? true : undefined), 5_000);
    expect(await readThrough(a, "ns", () => "v1")).toBe("v1");
    expect(a.peek!("ns", "k")).toBe("v1");
    // The other replica has no copy yet: it asks Redis, finds A's entry, and keeps a copy.
    expect(b.peek!("ns", "k")).toBeUndefined();
    expect(await readThrough(b, "ns", () => "never")).toBe("v1");
    expect(b.peek!("ns", "k")).toBe("v1");

    await b.bump("ns");
    // The bumping replica drops its own copy at once; the other hears it from Redis.
    expect(b.peek!("ns", "k")).toBeUndefined();
    await eventually("A drops its copy", noCopy(a, "ns"), 2_000);
    expect(await readThrough(a, "ns", () => "v2")).toBe("v2");
    expect(await readThrough(b, "ns", () => "never")).toBe("v2");
  });

  it("lets a copy expire with its Redis entry", async () => {
    const prefix = `t${randomUUID()}:`;
    const a = replica(url!, prefix);
    await eventually("feed live", () => isLive(a), 5_000);
    const { version } = await a.get("ns", "k");
    await a.set("ns", version, "k", "short", 300);
    expect(a.peek!("ns", "k")).toBe("short");
    await new Promise((r) => setTimeout(r, 400));
    expect(a.peek!("ns", "k")).toBeUndefined();
    expect((await a.get("ns", "k")).value).toBeUndefined();
  });

  it("keeps no copy while its subscriber is gone, and is kept current again once it is back", async () => {
    const prefix = `t${randomUUID()}:`;
    const [a, b] = [replica(url!, prefix), replica(url!, prefix)];
    await eventually("feeds live", async () => ((await isLive(a)) && (await isLive(b)) ? true : undefined), 5_000);
    await readThrough(a, "ns", () => "v1");
    const admin = new Redis(url!);
    try {
      await admin.client("KILL", "ID", await clientId(admin, `near-test-${process.pid}-${replicas - 1}:invalidations`));
      // Between the kill and the resubscription A could miss a bump: it must not serve the copy.
      await eventually("A stops serving copies", noCopy(a, "ns"), 2_000);
      await b.bump("ns");
      await b.set("ns", (await b.get("ns", "k")).version, "k", "v2", 60_000);
      await eventually("A's feed is back", () => isLive(a), 5_000);
      expect(await readThrough(a, "ns", () => "never")).toBe("v2");
      // Tracking really is on again: the next bump reaches A.
      await b.bump("ns");
      await eventually("A hears the bump after recovery", noCopy(a, "ns"), 2_000);
    } finally {
      admin.disconnect();
    }
  });

  it("re-arms tracking when the data connection reconnects", async () => {
    const prefix = `t${randomUUID()}:`;
    const [a, b] = [replica(url!, prefix), replica(url!, prefix)];
    await eventually("feeds live", async () => ((await isLive(a)) && (await isLive(b)) ? true : undefined), 5_000);
    const admin = new Redis(url!);
    try {
      // Tracking is state of the data connection: a new connection has none until it is turned on again.
      await admin.client("KILL", "ID", await clientId(admin, `near-test-${process.pid}-${replicas - 1}`));
      await eventually("A's feed is back", () => isLive(a), 5_000);
      expect(await readThrough(a, "ns", () => "v1")).toBe("v1");
      expect(a.peek!("ns", "k")).toBe("v1");
      await b.bump("ns");
      await eventually("A hears the bump on its new connection", noCopy(a, "ns"), 2_000);
    } finally {
      admin.disconnect();
    }
  });

  it("ends on the newest generation after bumps and reads race", async () => {
    const prefix = `t${randomUUID()}:`;
    const [a, b] = [replica(url!, prefix), replica(url!, prefix)];
    await eventually("feeds live", async () => ((await isLive(a)) && (await isLive(b)) ? true : undefined), 5_000);
    // B writes generation n and bumps, as the worker does after each commit; A reads all along.
    let generation = 0;
    const until = Date.now() + 1_500;
    const readers = Array.from({ length: 8 }, async () => {
      while (Date.now() < until) await readThrough(a, "ns", () => String(generation));
    });
    const writer = (async () => {
      while (Date.now() < until) {
        generation++;
        await b.bump("ns");
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    await Promise.all([...readers, writer]);
    await new Promise((r) => setTimeout(r, 300));
    // Whatever A kept during the race, after it the newest generation is what a read gives.
    const final = String(generation);
    await b.bump("ns");
    await eventually("A drops its copy after the last bump", noCopy(a, "ns"), 2_000);
    expect(await readThrough(a, "ns", () => final)).toBe(final);
    expect(a.peek!("ns", "k")).toBe(final);
  });
});

describe.skipIf(!hasRedisServer)("near copies when Redis itself fails", () => {
  let server: ChildProcess | undefined;
  let port = 0;
  const start = async () => {
    server = spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      {
        stdio: "ignore",
      },
    );
    await eventually(
      "redis-server answers",
      async () =>
        spawnSync("redis-cli", ["-p", String(port), "ping"])
          .stdout?.toString()
          .trim() === "PONG"
          ? true
          : undefined,
      10_000,
    );
  };
  afterAll(() => {
    server?.kill("SIGKILL");
  });

  it("stops serving copies while Redis is frozen (heartbeat) and after it is killed, and recovers after a restart", async () => {
    port = await freePort();
    await start();
    const redisUrl = `redis://127.0.0.1:${port}`;
    const a = replica(redisUrl, "p:", 200);
    await eventually("feed live", () => isLive(a), 5_000);
    expect(await readThrough(a, "ns", () => "v1")).toBe("v1");
    expect(a.peek!("ns", "k")).toBe("v1");

    // Frozen: the sockets stay open, nothing answers. Changes could be happening unseen.
    server!.kill("SIGSTOP");
    await eventually("copies stop within a few heartbeats", noCopy(a, "ns"), 3_000);
    server!.kill("SIGCONT");
    await eventually("feed live again", () => isLive(a), 10_000);
    expect(await readThrough(a, "ns", () => "never")).toBe("v1");

    server!.kill("SIGKILL");
    await eventually("copies stop when Redis is gone", noCopy(a, "ns"), 2_000);
    await expect(a.get("ns", "k")).rejects.toThrow();
    await start();
    await eventually("feed live after the restart", () => isLive(a), 15_000);
    // The restarted Redis is empty: the entry is gone and nothing from before is served.
    expect(a.peek!("ns", "k")).toBeUndefined();
    expect(await readThrough(a, "ns", () => "v-after")).toBe("v-after");
    expect(a.peek!("ns", "k")).toBe("v-after");
  }, 60_000);
});

/** Live as the cache sees it: a copy it just stored is served. */
async function isLive(c: VersionedCache): Promise<true | undefined> {
  const ns = `live-probe-${randomUUID()}`;
  try {
    const { version } = await c.get(ns, "k");
    await c.set(ns, version, "k", "x", 5_000);
  } catch {
    return undefined;
  }
  return c.peek!(ns, "k") === "x" ? true : undefined;
}

/** The id of the one client named `name` (CLIENT LIST). */
async function clientId(admin: Redis, name: string): Promise<string> {
  const list = (await admin.client("LIST")) as string;
  const ids = list
    .split("\n")
    .filter((l) => l.includes(` name=${name} `))
    .map((l) => /id=(\d+)/.exec(l)![1]!);
  if (ids.length !== 1) throw new Error(`${ids.length} clients named ${name}`);
  return ids[0]!;
}
