/**
 * Device telemetry end to end on the embedded default: `npm run bench:devices`
 * (node --import tsx bench/devices.ts). Starts the `npm start` launcher on free ports with a
 * temporary data dir, registers BENCH_DEVICES devices through the gateway and trades their keys for
 * tokens, then, one after the other on the same mesh:
 *
 *  1. gRPC streams: half the devices each hold a StreamEvents through the gateway for
 *     BENCH_SECONDS, keeping up to BENCH_WINDOW events unacknowledged;
 *  2. Connect batches: the other half each send PublishEvents of BENCH_BATCH events (Connect JSON
 *     over HTTP/1.1, what a browser or script sends) back to back for BENCH_SECONDS;
 *  3. GetDeviceState over gRPC, closed loop from a process writing HTTP/2 frames itself
 *     (bench/lib/h2-frames-load.ts), BENCH_READ_CONCURRENCY devices with one read in flight each:
 *     its cost per call is a fraction of the server's, so the rate is the server's and not the
 *     client's. First the mesh's devices (cache in process, the embedded default), then
 *     BENCH_READ_REPLICAS devices processes sharing Redis (REDIS_URL, default the local one; left
 *     out when it does not answer), each against as many processes with the cache off: a Node
 *     process serves on one core, so a service meant to scale out is measured scaled out too.
 *
 * Throughput counts acknowledged events (Kafka holds them). Send -> visible is, per event, the
 * time its state commit started (the history row's applied_at, Postgres' clock) minus the
 * event_time the device stamped as it sent it (this machine's clock, the same one): the state is
 * readable through GetDeviceState from that commit, plus the cache invalidation right after it.
 * Writes bench/results/devices.md. BENCH_CPU_PROF_DIR=<dir> runs every process of the mesh with
 * --cpu-prof writing there (one profile per process, on exit).
 */
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Redis } from "ioredis";
import pg from "pg";
import {
  DeviceEventSchema,
  DeviceService,
  GetDeviceStateRequestSchema,
  type StreamEventsRequest,
} from "../gen/medmesh/devices/v1/devices_pb.js";
import { framesLoad } from "./lib/h2-frames-load.js";
import { grpcFrame, percentile } from "./lib/tools.js";
import { rawGrpcCall } from "./lib/verify.js";
import { cpuSecondsOf, freePort, resultsFile, startMesh, type Mesh } from "./lib/mesh.js";
import { intFromEnv } from "./lib/env.js";
import { fmt, say } from "./lib/format.js";
import { signInBenchAdmin } from "./lib/sign-in.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const DEVICES = intFromEnv("BENCH_DEVICES", 40, 2, 10_000);
const SECONDS = intFromEnv("BENCH_SECONDS", 20, 1, 3600);
const WINDOW = intFromEnv("BENCH_WINDOW", 200, 1, 100_000);
const BATCH = intFromEnv("BENCH_BATCH", 100, 1, 500);
const READ_SECONDS = intFromEnv("BENCH_READ_SECONDS", 10, 1, 600);
const READ_CONCURRENCY = intFromEnv("BENCH_READ_CONCURRENCY", 32, 1, 1024);
// HTTP/2 connections the read load spreads its calls over.
const READ_CONNECTIONS = intFromEnv("BENCH_READ_CONNECTIONS", 2, 1, 64);
// Replicas of devices sharing Redis for the Redis rows: a Node process serves on one core.
const READ_REPLICAS = intFromEnv("BENCH_READ_REPLICAS", 2, 1, 16);
const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const UNCACHED = { DEVICES_STATE_CACHE_TTL_MS: "0" };
const STATE_PATH = "/medmesh.devices.v1.DeviceService/GetDeviceState";
// Where every mesh component writes a CPU profile (node --cpu-prof) when it stops; unset: none.
const PROF_DIR = process.env.BENCH_CPU_PROF_DIR;

interface Device {
  id: string;
  token: string;
  next: number;
}

interface PhaseResult {
  name: string;
  devices: number;
  acked: number;
  seconds: number;
  errors: number;
  /** Milliseconds from send to applied, per event, sorted ascending. */
  latency: { p50: number; p99: number; max: number; count: number };
  /** Last event applied after the phase ended (how far the worker trailed), seconds. */
  drainSeconds: number;
  cpu: Record<string, number>;
}

async function connectJson<T>(gateway: string, method: string, body: unknown, token?: string): Promise<T> {
  const res = await fetch(`${gateway}/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method}: ${res.status} ${text.slice(0, 300)}`);
  return JSON.parse(text) as T;
}

async function registerDevices(gateway: string, admin: string, n: number): Promise<Device[]> {
  const out: Device[] = [];
  for (let i = 0; i < n; i++) {
    const reg = await connectJson<{ device: { id: string }; apiKey: string }>(
      gateway,
      "medmesh.devices.v1.DeviceService/RegisterDevice",
      { name: `bench device ${i}`, type: "bench-sensor" },
      admin,
    );
    const { accessToken } = await connectJson<{ accessToken: string }>(
      gateway,
      "medmesh.identity.v1.IdentityService/ExchangeApiKey",
      { apiKey: reg.apiKey },
    );
    out.push({ id: reg.device.id, token: accessToken, next: 1 });
  }
  return out;
}

const eventOf = (d: Device, seq: number) =>
  create(DeviceEventSchema, {
    deviceId: d.id,
    sequence: BigInt(seq),
    clientId: `b${seq}`,
    eventTime: timestampFromDate(new Date()),
    readings: { pulse: 60 + (seq % 40), spo2: 90 + (seq % 10) },
  });

/** One device's stream: keeps WINDOW events unacknowledged until `until`, then waits for the last ack. */
async function streamDevice(gateway: string, d: Device, until: number): Promise<{ acked: number; error?: string }> {
  const transport = createGrpcTransport({ baseUrl: gateway });
  const client = createClient(DeviceService, transport);
  let acked = d.next - 1;
  let sent = d.next - 1;
  let wake: (() => void) | undefined;
  async function* events(): AsyncIterable<StreamEventsRequest> {
    while (Date.now() < until) {
      while (sent - acked >= WINDOW) await new Promise<void>((r) => (wake = r));
      sent++;
      yield { event: eventOf(d, sent) } as StreamEventsRequest;
    }
  }
  const start = acked;
  try {
    for await (const r of client.streamEvents(events(), {
      headers: { authorization: `Bearer ${d.token}` },
      timeoutMs: (SECONDS + 60) * 1000,
    })) {
      acked = Number(r.ackedSequence);
      const w = wake;
      wake = undefined;
      w?.();
    }
  } catch (err) {
    d.next = acked + 1;
    return { acked: acked - start, error: (err as Error).message };
  }
  d.next = acked + 1;
  return { acked: acked - start };
}

async function batchDevice(gateway: string, d: Device, until: number): Promise<{ acked: number; errors: number }> {
  let acked = 0;
  let errors = 0;
  while (Date.now() < until) {
    const events = Array.from({ length: BATCH }, (_, i) => {
      const e = eventOf(d, d.next + i);
      return {
        deviceId: e.deviceId,
        sequence: String(e.sequence),
        clientId: e.clientId,
        eventTime: new Date().toISOString(),
        readings: e.readings,
      };
    });
    try {
      const res = await connectJson<{ ackedSequence: string }>(
        gateway,
        "medmesh.devices.v1.DeviceService/PublishEvents",
        { events },
        d.token,
      );
      const now = Number(res.ackedSequence);
      acked += now - (d.next - 1);
      d.next = now + 1;
    } catch {
      errors++;
    }
  }
  return { acked, errors };
}

async function latencies(db: pg.Client, ids: string[], since: Date) {
  const r = await db.query<{ p50: number; p99: number; max: number; n: string; last: Date }>(
    `select percentile_cont(0.5) within group (order by ms) p50, percentile_cont(0.99) within group (order by ms) p99,
            max(ms) max, count(*) n, max(applied_at) last
       from (select extract(epoch from applied_at - event_time) * 1000 ms, applied_at from devices.device_event
              where device_id = any($1::uuid[]) and event_time >= $2) t`,
    [ids, since],
  );
  return r.rows[0]!;
}

async function waitApplied(db: pg.Client, ids: string[], since: Date, expected: number) {
  const until = Date.now() + 120_000;
  for (;;) {
    const r = await db.query<{ n: string }>(
      "select count(*) n from devices.device_event where device_id = any($1::uuid[]) and event_time >= $2",
      [ids, since],
    );
    if (Number(r.rows[0]!.n) >= expected || Date.now() > until) return Number(r.rows[0]!.n);
    await new Promise((r) => setTimeout(r, 250));
  }
}

function cpuOf(mesh: Mesh): Record<string, number> {
  return Object.fromEntries(Object.entries(mesh.pids).map(([name, pid]) => [name, cpuSecondsOf(pid)]));
}

async function phase(
  name: string,
  mesh: Mesh,
  db: pg.Client,
  devices: Device[],
  run: (d: Device, until: number) => Promise<{ acked: number; errors: number }>,
): Promise<PhaseResult> {
  say(`${name}: ${devices.length} devices for ${SECONDS} s`);
  const since = new Date();
  const cpu0 = cpuOf(mesh);
  const t0 = Date.now();
  const results = await Promise.all(devices.map((d) => run(d, t0 + SECONDS * 1000)));
  const seconds = (Date.now() - t0) / 1000;
  const acked = results.reduce((a, r) => a + r.acked, 0);
  const errors = results.reduce((a, r) => a + r.errors, 0);
  const ids = devices.map((d) => d.id);
  await waitApplied(db, ids, since, acked);
  const cpu1 = cpuOf(mesh);
  const l = await latencies(db, ids, since);
  const result: PhaseResult = {
    name,
    devices: devices.length,
    acked,
    seconds,
    errors,
    latency: { p50: Number(l.p50), p99: Number(l.p99), max: Number(l.max), count: Number(l.n) },
    drainSeconds: Math.max(0, (new Date(l.last).getTime() - (t0 + seconds * 1000)) / 1000),
    cpu: Object.fromEntries(Object.keys(cpu1).map((k) => [k, (cpu1[k] ?? 0) - (cpu0[k] ?? 0)])),
  };
  say(
    `${name}: ${fmt(acked / seconds, 0)} events/s acknowledged (${acked} in ${fmt(seconds)} s, ${errors} errors); ` +
      `send -> applied p50 ${fmt(l.p50)} ms, p99 ${fmt(l.p99)} ms over ${l.n} events`,
  );
  return result;
}

/**
 * Closed-loop reads from bench/lib/h2-frames-load.ts (HTTP/2 frames written by hand in a process
 * of its own: a few µs per call, where a grpc-js, Connect, node:http2 or h2load client spends
 * about as much per call as a cached read costs the server and, on these 2 cores, sets the rate
 * itself). BENCH_READ_CONCURRENCY devices, one read in flight for each: never two for one device,
 * so the uncached side's single-flight (concurrent misses of one device share a query) never
 * merges reads, and every uncached read is one query. Each device's request is first sent once
 * over node:http2 and must come back grpc-status 0; its answer's length is what the load checks.
 * Also the server side's CPU per read (the given processes, over every call including the
 * warm-up) and the generator's own.
 */
async function readLoad(origins: string[], token: string, ids: string[], servicePids: number[], postgresPid: number) {
  const readSet = ids.slice(0, Math.min(READ_CONCURRENCY, ids.length));
  const requests: { message: Uint8Array; okDataBytes: number }[] = [];
  for (const deviceId of readSet) {
    const message = toBinary(GetDeviceStateRequestSchema, create(GetDeviceStateRequestSchema, { deviceId }));
    // Every replica must answer it (and, with a cache, has it cached before the measured window).
    let okDataBytes = 0;
    for (const origin of origins) {
      const probe = await rawGrpcCall(origin, STATE_PATH, grpcFrame(message));
      if (probe.httpStatus !== 200 || probe.grpcStatus !== "0" || probe.data.length < 5)
        throw new Error(
          `GetDeviceState(${deviceId}) probe at ${origin}: HTTP ${probe.httpStatus}, grpc-status ${probe.grpcStatus} ${probe.grpcMessage ?? ""}`,
        );
      okDataBytes = probe.data.length;
    }
    requests.push({ message, okDataBytes });
  }
  const serviceCpu = () => servicePids.reduce((a, pid) => a + cpuSecondsOf(pid), 0);
  // The service alone as well: at a few hundred reads a second the embedded Postgres' own
  // background work, divided among them, is most of a cached read's share.
  const serviceCpu0 = serviceCpu();
  const postgresCpu0 = cpuSecondsOf(postgresPid);
  const r = await framesLoad({
    origin: origins[0]!,
    origins,
    path: STATE_PATH,
    headers: { authorization: `Bearer ${token}` },
    requests,
    connections: Math.max(READ_CONNECTIONS, origins.length),
    warmupMs: 2_000,
    durationMs: READ_SECONDS * 1000,
  });
  const service = serviceCpu() - serviceCpu0;
  const postgres = cpuSecondsOf(postgresPid) - postgresCpu0;
  return {
    ...r,
    devices: readSet.length,
    replicas: origins.length,
    p50: percentile(r.latenciesMs, 50),
    p99: percentile(r.latenciesMs, 99),
    serverCpuUsPerCall: ((service + postgres) / r.completed) * 1e6,
    serviceCpuUsPerCall: (service / r.completed) * 1e6,
    generatorCpuUsPerCall: (r.generatorCpuSeconds / r.completed) * 1e6,
  };
}

type ReadResult = Awaited<ReturnType<typeof readLoad>>;

/** Devices processes beside the mesh's own, on its database, broker and identity, with `env` on top. */
async function startReplicas(mesh: Mesh, dataDir: string, n: number, env: Record<string, string>) {
  const started: { origin: string; child: ReturnType<typeof spawn> }[] = [];
  for (let i = 0; i < n; i++) {
    const port = await freePort();
    const child = spawn(process.execPath, ["--import", "tsx", "services/devices/main.ts"], {
      cwd: root,
      env: {
        ...process.env,
        LOG_LEVEL: "error",
        DATABASE_URL: process.env.DATABASE_URL ?? mesh.endpoints.postgres!,
        KAFKA_BROKERS: mesh.endpoints.kafka!,
        IDENTITY_TARGET: mesh.endpoints.identity!.replace("grpc://", ""),
        DEVICES_PORT: String(port),
        DEVICES_API_KEY: fs.readFileSync(path.join(dataDir, "secrets", "devices-api-key"), "utf8").trim(),
        ...env,
      },
      stdio: ["ignore", "pipe", "inherit"],
    });
    started.push({ origin: `http://127.0.0.1:${port}`, child });
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on("data", (d: Buffer) => d.toString().includes("devices grpc://") && resolve());
      child.once("exit", (code) => reject(new Error(`devices replica exited ${code}`)));
    });
  }
  return {
    origins: started.map((s) => s.origin),
    pids: started.map((s) => s.child.pid!),
    stop: async () => {
      await Promise.all(
        started.map(
          (s) =>
            new Promise<void>((resolve) => {
              if (s.child.exitCode !== null) return resolve();
              s.child.once("exit", () => resolve());
              s.child.kill("SIGTERM");
            }),
        ),
      );
    },
  };
}

/** Whether Redis answers at `url` (the bench then measures the cache there too). */
async function redisAnswers(url: string): Promise<boolean> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  redis.on("error", () => undefined);
  try {
    await redis.connect();
    return (await redis.ping()) === "PONG";
  } catch {
    return false;
  } finally {
    redis.disconnect();
  }
}

async function main() {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "medmesh-bench-devices-"));
  const mesh = await startMesh({
    root,
    dataDir,
    required: ["gateway", "devices", "kafka"],
    timeoutMs: 180_000,
    nodeArgs: PROF_DIR ? ["--cpu-prof", `--cpu-prof-dir=${path.resolve(PROF_DIR)}`] : [],
  });
  let stopReplicas: (() => Promise<void>) | undefined;
  const db = new pg.Client({ connectionString: process.env.DATABASE_URL ?? mesh.endpoints.postgres });
  try {
    await db.connect();
    const gateway = mesh.endpoints.gateway!;
    say(`mesh up: gateway ${gateway}, devices ${mesh.endpoints.devices}`);
    const admin = await signInBenchAdmin(gateway);
    const devices = await registerDevices(gateway, admin, DEVICES);
    const half = Math.floor(DEVICES / 2);
    const streams = await phase("gRPC streams", mesh, db, devices.slice(0, half), async (d, until) => {
      const r = await streamDevice(gateway, d, until);
      if (r.error) say(`stream of ${d.id} ended: ${r.error}`);
      return { acked: r.acked, errors: r.error ? 1 : 0 };
    });
    const batches = await phase("Connect batches", mesh, db, devices.slice(half), (d, until) =>
      batchDevice(gateway, d, until),
    );

    // Reads: one replica with its cache in process (the mesh's own devices, the embedded
    // default) and READ_REPLICAS replicas sharing Redis, each against the same number of
    // replicas with the cache off.
    const ids = devices.map((d) => d.id);
    say(
      `GetDeviceState: ${Math.min(READ_CONCURRENCY, ids.length)} devices, one read in flight each, ${READ_SECONDS} s`,
    );
    // The probes (bench/lib/verify.ts) send this header.
    process.env.BENCH_AUTHORIZATION = `Bearer ${admin}`;
    const reads: { label: string; cached: ReadResult; uncached: ReadResult }[] = [];
    const measure = async (n: number, env: Record<string, string>) => {
      const replicas = await startReplicas(mesh, dataDir, n, env);
      stopReplicas = replicas.stop;
      try {
        return await readLoad(replicas.origins, admin, ids, replicas.pids, mesh.pids.postgres!);
      } finally {
        await replicas.stop();
      }
    };
    const inProcess = await readLoad(
      [mesh.endpoints.devices!.replace("grpc://", "http://")],
      admin,
      ids,
      [mesh.pids.devices!],
      mesh.pids.postgres!,
    );
    reads.push({ label: "1 replica, cache in process", cached: inProcess, uncached: await measure(1, UNCACHED) });
    if (await redisAnswers(REDIS_URL))
      reads.push({
        label: `${READ_REPLICAS} replicas, cache in Redis (with in-process copies)`,
        cached: await measure(READ_REPLICAS, { REDIS_URL }),
        uncached: await measure(READ_REPLICAS, UNCACHED),
      });
    else say(`no Redis at ${REDIS_URL}: the Redis rows are left out`);
    const rps = (r: ReadResult) => r.ok / r.windowSeconds;
    for (const r of reads)
      say(
        `GetDeviceState, ${r.label}: cached ${fmt(rps(r.cached), 0)} req/s, uncached ${fmt(rps(r.uncached), 0)}: ` +
          `${fmt(rps(r.cached) / rps(r.uncached), 2)}x; server CPU per read ${fmt(r.cached.serverCpuUsPerCall, 0)} vs ` +
          `${fmt(r.uncached.serverCpuUsPerCall, 0)} µs (devices alone ${fmt(r.cached.serviceCpuUsPerCall, 0)} vs ` +
          `${fmt(r.uncached.serviceCpuUsPerCall, 0)}; load generator ${fmt(r.cached.generatorCpuUsPerCall, 0)} vs ` +
          `${fmt(r.uncached.generatorCpuUsPerCall, 0)})`,
      );
    const readRow = (label: string, r: ReadResult) =>
      `| ${label} | ${fmt(rps(r), 0)} | ${fmt(r.p50, 2)} | ${fmt(r.p99, 2)} | ${JSON.stringify(r.errors)} | ${fmt(r.serverCpuUsPerCall, 0)} | ${fmt(r.serviceCpuUsPerCall, 0)} | ${fmt(r.generatorCpuUsPerCall, 0)} |`;

    const row = (r: PhaseResult) =>
      `| ${r.name} | ${r.devices} | ${fmt(r.acked / r.seconds, 0)} | ${r.errors} | ${fmt(r.latency.p50)} | ${fmt(r.latency.p99)} | ${fmt(r.latency.max)} | ${fmt(r.drainSeconds, 2)} | ${Object.entries(
        r.cpu,
      )
        .filter(([, s]) => s > 0.05)
        .map(([n, s]) => `${n} ${fmt((s / r.acked) * 1e6, 0)}`)
        .join(", ")} |`;
    const md = [
      `# bench:devices — ${new Date().toISOString()}`,
      "",
      `Embedded default (PGlite behind the wire protocol, the embedded broker), ${os.cpus().length} cores shared by the load generator and the mesh.`,
      `${DEVICES} devices: half on gRPC streams through the gateway (window ${WINDOW}), half on Connect JSON batches of ${BATCH}; ${SECONDS} s each, one after the other.`,
      "",
      "| path | devices | events/s acked | errors | send→applied p50 ms | p99 ms | max ms | worker behind at end s | CPU µs per event |",
      "|---|---|---|---|---|---|---|---|---|",
      row(streams),
      row(batches),
      "",
      `GetDeviceState, gRPC directly to the service from one process writing HTTP/2 frames itself (bench/lib/h2-frames-load.ts, ` +
        `at least ${READ_CONNECTIONS} connections and one per replica, pre-encoded requests; a call counts when it brings headers, the answer's length the ` +
        "device's probe gave with grpc-status 0, and trailers), " +
        `${inProcess.devices} in flight, never two for one device, ${READ_SECONDS} s after 2 s of warm-up. Cache off: devices processes on the same database with ` +
        "DEVICES_STATE_CACHE_TTL_MS=0, where every read is one query (single-flight only merges reads of one device in flight together, and there are none). " +
        "Each cached row is compared with the same number of replicas with the cache off.",
      "",
      "| replicas and cache | req/s | p50 ms | p99 ms | errors | server CPU µs per read (devices + postgres) | devices alone | load generator CPU µs per read |",
      "|---|---|---|---|---|---|---|---|",
      ...reads.flatMap((r) => [readRow(`${r.label}: on (TTL 60 s)`, r.cached), readRow(`${r.label}: off`, r.uncached)]),
      "",
      ...reads.map(
        (r) =>
          `${r.label}: cached / uncached ${fmt(rps(r.cached) / rps(r.uncached), 2)}x in req/s, ` +
          `${fmt(r.uncached.serverCpuUsPerCall / r.cached.serverCpuUsPerCall, 2)}x in server CPU per read (devices + postgres).`,
      ),
      "",
    ].join("\n");
    fs.mkdirSync(path.join(root, "bench/results"), { recursive: true });
    const file = resultsFile(root, "devices");
    fs.writeFileSync(file, md);
    say(`wrote ${path.relative(root, file)}`);
    console.log(md);
  } finally {
    await stopReplicas?.();
    await db.end().catch(() => undefined);
    await mesh.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
