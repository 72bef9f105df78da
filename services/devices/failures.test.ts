import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { startBroker, type RunningBroker } from "../../deploy/embedded/kafka/index.js";
import {
  DeviceEventSchema,
  DeviceService,
  EventOutcome,
  GetDeviceStateResponseSchema,
} from "../../gen/medmesh/devices/v1/devices_pb.js";
import { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { encodingOf } from "../../platform/grpc/encoded.js";
import { testEnv } from "../../test/support/backends.js";
import { freePort } from "../../test/support/embedded-mesh.js";
import { startTestIdentity, type TestIdentity } from "../../test/support/identity.js";
import { rejection } from "../../test/support/rejection.js";
import { startDevices } from "./main.js";

type DevicesClient = ReturnType<typeof createMeshClient<typeof DeviceService>>;

const event = (deviceId: string, n: number) =>
  create(DeviceEventSchema, {
    deviceId,
    sequence: BigInt(n),
    clientId: `f${n}`,
    eventTime: timestampFromDate(new Date()),
    readings: { pulse: n },
  });

/** A TCP proxy that can be cut: what a database outage looks like to the service. */
async function cuttableProxy(target: { host: string; port: number }) {
  const sockets = new Set<net.Socket>();
  let up = true;
  const server = net.createServer((client) => {
    if (!up) return client.destroy();
    const upstream = net.connect(target.port, target.host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => undefined);
      s.on("close", () => sockets.delete(s));
    }
    client.pipe(upstream).pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as net.AddressInfo).port,
    cut() {
      up = false;
      for (const s of sockets) s.destroy();
    },
    restore() {
      up = true;
    },
    close: () =>
      new Promise<void>((r) => ((up = false), [...sockets].forEach((s) => s.destroy()), server.close(() => r()))),
  };
}

describe("devices when what it depends on fails", () => {
  const devicesKey = `mmk_${randomBytes(32).toString("base64url")}`;
  const brokerDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-devices-broker-"));
  const stops: Array<() => Promise<void>> = [];
  const clients: Array<{ close(): void }> = [];
  let identity: TestIdentity;
  let identityClient: ReturnType<typeof createMeshClient<typeof IdentityService>>;
  let broker: RunningBroker;
  let brokerPort: number;

  const startService = async (env: Record<string, string>) => {
    const suffix = randomBytes(4).toString("hex");
    const svc = await startDevices({
      ...testEnv,
      MEDMESH_DATA_DIR: "memory://",
      DEVICES_PORT: "0",
      DEVICES_DB_SCHEMA: `devices_f${suffix}`,
      DEVICES_GROUP_ID: `devices-f${suffix}`,
      KAFKA_BROKERS: broker.address,
      IDENTITY_TARGET: identity.target,
      DEVICES_API_KEY: devicesKey,
      DEVICES_RETRY_BASE_MS: "50",
      DEVICES_RETRY_MAX_MS: "500",
      ...env,
    });
    stops.unshift(svc.stop);
    return svc;
  };
  const as = (port: number, token: string): DevicesClient => {
    const c = createMeshClient(DeviceService, `127.0.0.1:${port}`, {
      headers: { authorization: `Bearer ${token}` },
      defaultTimeoutMs: 20_000,
    });
    clients.push(c);
    return c;
  };
  const device = async (port: number) => {
    const owner = as(port, await identity.token("doctor"));
    const reg = await owner.registerDevice({ name: "f", type: "oximeter" });
    const { accessToken } = await identityClient.exchangeApiKey({ apiKey: reg.apiKey });
    return { id: reg.device!.id, owner, client: as(port, accessToken) };
  };
  const version = async (owner: DevicesClient, id: string) =>
    (await owner.getDeviceState({ deviceId: id })).state!.version;

  beforeAll(async () => {
    brokerPort = await freePort();
    broker = await startBroker({ port: brokerPort, dataDir: brokerDir, logLevel: "silent", defaultPartitions: 3 });
    identity = await startTestIdentity({ IDENTITY_BOOTSTRAP_API_KEYS: `devices=${devicesKey}` });
    stops.push(() => identity.stop());
    identityClient = createMeshClient(IdentityService, identity.target, { defaultTimeoutMs: 10_000 });
    clients.push(identityClient);
  }, 60_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    for (const stop of stops) await stop();
    await broker.stop();
    rmSync(brokerDir, { recursive: true, force: true });
  });

  it("answers reads from Postgres and keeps ingesting while Redis is unreachable", async () => {
    // Nothing listens there: every cache call fails.
    const svc = await startService({ REDIS_URL: `redis://127.0.0.1:${await freePort()}` });
    const { id, owner, client } = await device(svc.port);
    const res = await client.publishEvents({ events: [1, 2, 3].map((n) => event(id, n)) });
    expect(res.ackedSequence).toBe(3n);
    await expect.poll(() => version(owner, id), { timeout: 20_000, interval: 100 }).toBe(3n);
    expect(svc.states.counts.cacheErrors).toBeGreaterThan(0);
    expect(svc.states.counts.hits).toBe(0);
  });

  it.skipIf(!process.env.REDIS_URL)(
    "serves repeated reads from Redis, with one database read for concurrent misses",
    async () => {
      const svc = await startService({ REDIS_URL: process.env.REDIS_URL! });
      const { id, owner, client } = await device(svc.port);
      await client.publishEvents({ events: [event(id, 1)] });
      await expect.poll(() => version(owner, id), { timeout: 20_000, interval: 100 }).toBe(1n);
      const loads = svc.states.counts.loads;
      await client.publishEvents({ events: [event(id, 2)] });
      await expect.poll(() => version(owner, id), { timeout: 20_000, interval: 100 }).toBe(2n);
      // Right after an invalidation, 20 readers at once: one database read between them, then hits.
      svc.states.invalidate(id);
      await new Promise((r) => setTimeout(r, 200));
      const before = svc.states.counts.loads;
      const errorsBefore = svc.states.counts.cacheErrors;
      const all = await Promise.all(Array.from({ length: 20 }, () => owner.getDeviceState({ deviceId: id })));
      expect(all.every((r) => r.state!.version === 2n)).toBe(true);
      // Readers arrive spread out, some after the first read finished: they share it until its
      // answer is stored. Only a reader whose Redis lookup outran its 100 ms bound (a loaded
      // machine) reads on its own, so each such timeout may add one read, never more.
      const timedOut = svc.states.counts.cacheErrors - errorsBefore;
      expect(svc.states.counts.loads - before).toBeGreaterThanOrEqual(1);
      expect(svc.states.counts.loads - before).toBeLessThanOrEqual(1 + timedOut);
      expect(svc.states.counts.loads).toBeGreaterThan(loads);
      const hits = svc.states.counts.hits;
      await owner.getDeviceState({ deviceId: id });
      expect(svc.states.counts.hits).toBe(hits + 1);
      // A hit on an unchanged value hands out the answer made for the last one: frozen, its bytes attached.
      const first = await svc.states.answer(id);
      const again = await svc.states.answer(id);
      expect(again).toBe(first);
      expect(Object.isFrozen(again!.response.state!.readings)).toBe(true);
      expect(Buffer.from(encodingOf(again!.response)!)).toEqual(
        Buffer.from(toBinary(GetDeviceStateResponseSchema, again!.response)),
      );
      // A new state is a new value: a new answer.
      await client.publishEvents({ events: [event(id, 3)] });
      await expect.poll(() => version(owner, id), { timeout: 20_000, interval: 100 }).toBe(3n);
      expect((await svc.states.answer(id))!.response.state!.version).toBe(3n);
      // Unknown devices are not_found, and remembered as such.
      const unknown = "00000000-0000-4000-8000-000000000001";
      expect((await rejection(owner.getDeviceState({ deviceId: unknown }))).code).toBe(Code.NotFound);
      const l = svc.states.counts.loads;
      expect((await rejection(owner.getDeviceState({ deviceId: unknown }))).code).toBe(Code.NotFound);
      expect(svc.states.counts.loads).toBe(l);
    },
  );

  // Replicas share a database: without DATABASE_URL each would have a PGlite of its own.
  it.skipIf(!process.env.REDIS_URL || !process.env.DATABASE_URL)(
    "two replicas on one Redis: each serves its in-process copy, and a state applied by either reaches both",
    async () => {
      const suffix = randomBytes(4).toString("hex");
      // One deployment: the same schema, consumer group and cache namespace.
      const shared = {
        REDIS_URL: process.env.REDIS_URL!,
        DATABASE_URL: process.env.DATABASE_URL!,
        DEVICES_DB_SCHEMA: `devices_r${suffix}`,
        DEVICES_GROUP_ID: `devices-r${suffix}`,
      };
      const [one, two] = [await startService(shared), await startService(shared)];
      const doctor = await identity.token("doctor");
      const owner = as(one.port, doctor);
      const ownerAtTwo = as(two.port, doctor);
      const reg = await owner.registerDevice({ name: "r", type: "oximeter" });
      const id = reg.device!.id;
      const client = as(one.port, (await identityClient.exchangeApiKey({ apiKey: reg.apiKey })).accessToken);
      for (const seq of [1, 2, 3]) {
        await client.publishEvents({ events: [event(id, seq)] });
        // Whichever replica's worker applies it, both answer the new state (no copy outlives the bump).
        await expect.poll(() => version(owner, id), { timeout: 20_000, interval: 50 }).toBe(BigInt(seq));
        await expect.poll(() => version(ownerAtTwo, id), { timeout: 20_000, interval: 50 }).toBe(BigInt(seq));
        const hits = two.states.counts.hits;
        const loads = two.states.counts.loads;
        for (let i = 0; i < 5; i++) expect(await version(ownerAtTwo, id)).toBe(BigInt(seq));
        expect(two.states.counts.hits - hits).toBe(5);
        expect(two.states.counts.loads).toBe(loads);
      }
    },
  );

  it("never acknowledges while the broker is down, and takes the resend once it is back", async () => {
    const svc = await startService({});
    const { id, owner, client } = await device(svc.port);
    expect((await client.publishEvents({ events: [event(id, 1)] })).ackedSequence).toBe(1n);
    await broker.stop();
    const err = await rejection(client.publishEvents({ events: [event(id, 2), event(id, 3)] }));
    expect(err.code).toBe(Code.Unavailable);
    expect(err.rawMessage).toMatch(/not stored .*send it again/);
    broker = await startBroker({ port: brokerPort, dataDir: brokerDir, logLevel: "silent", defaultPartitions: 3 });
    // The device resends what was not acknowledged until it is.
    let res;
    for (let i = 0; i < 100; i++) {
      res = await client.publishEvents({ events: [event(id, 2), event(id, 3)] }).catch(() => undefined);
      if (res) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(res!.ackedSequence).toBe(3n);
    expect(res!.results.every((r) => r.outcome !== EventOutcome.REJECTED)).toBe(true);
    await expect.poll(() => version(owner, id), { timeout: 60_000, interval: 200 }).toBe(3n);
    const history = await owner.listDeviceEvents({ deviceId: id });
    expect(history.events.map((e) => e.sequence)).toEqual([3n, 2n, 1n]);
  }, 120_000);

  it.skipIf(!process.env.DATABASE_URL)(
    "keeps acknowledged events in Kafka while Postgres is unreachable and applies them after it returns",
    async () => {
      const url = new URL(process.env.DATABASE_URL!);
      const proxy = await cuttableProxy({ host: url.hostname, port: Number(url.port || 5432) });
      stops.push(proxy.close);
      url.hostname = "127.0.0.1";
      url.port = String(proxy.port);
      const svc = await startService({ DATABASE_URL: url.toString() });
      const { id, owner, client } = await device(svc.port);
      expect((await client.publishEvents({ events: [event(id, 1)] })).ackedSequence).toBe(1n);
      await expect.poll(() => version(owner, id), { timeout: 20_000, interval: 100 }).toBe(1n);
      proxy.cut();
      // The device is known to the ingest: its events still reach Kafka and are acknowledged.
      const res = await client.publishEvents({ events: [2, 3, 4].map((n) => event(id, n)) });
      expect(res.ackedSequence).toBe(4n);
      // Reads need the database (or the cache): an error, not a stale answer after the invalidation.
      await new Promise((r) => setTimeout(r, 1_000));
      proxy.restore();
      await expect.poll(() => version(owner, id), { timeout: 60_000, interval: 250 }).toBe(4n);
      const history = await owner.listDeviceEvents({ deviceId: id });
      expect(history.events.map((e) => e.sequence)).toEqual([4n, 3n, 2n, 1n]);
    },
    120_000,
  );
});
