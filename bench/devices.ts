/**
 * Device telemetry end to end on the embedded default: `npm run bench:devices`
 * (node --import tsx bench/devices.ts). Starts the `npm start` launcher on free ports with a
 * temporary data dir, registers BENCH_DEVICES devices through the gateway and trades their keys for
 * tokens, then, one after the other on the same mesh:
 *
 *  1. gRPC streams: half the devices each hold a StreamEvents through the gateway for
 *     BENCH_SECONDS, keeping up to BENCH_WINDOW events unacknowledged. They are simulated by
 *     bench/lib/h2-bidi-load.ts, a process writing the HTTP/2 frames itself (one connection per
 *     device) at 2–7 µs of CPU per event: connect-node's client spent 32–43, a fifth of these 2
 *     cores at 10,000 events/s, taken from the mesh it measured;
 *  2. Connect batches: the other half each send PublishEvents of BENCH_BATCH events (Connect JSON
 *     over HTTP/1.1, what a browser or script sends) back to back for BENCH_SECONDS;
 *  3. paced, open loop (BENCH_RATE events/s in all, 0 skips it): the stream devices again, each
 *     sending on a fixed schedule (event i of a device due at t0 + i / its share of the rate), then
 *     the batch devices sending a batch of BENCH_BATCH on the same kind of schedule. Every event
 *     carries its *scheduled* time as event_time, so a sender held back (a full window, a batch
 *     still out, the bench's own event loop) adds its delay to the latency instead of hiding it
 *     (coordinated omission); BENCH_WINDOW stays only as a safety bound, counted when it binds;
 *  4. GetDeviceState over gRPC, closed loop from a process writing HTTP/2 frames itself
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
import { Redis } from "ioredis";
import pg from "pg";
import { GetDeviceStateRequestSchema } from "../gen/medmesh/devices/v1/devices_pb.js";
import { bidiStreamsLoad } from "./lib/h2-bidi-load.js";
import { framesLoad } from "./lib/h2-frames-load.js";
import { grpcFrame, percentile } from "./lib/tools.js";
import { rawGrpcCall } from "./lib/verify.js";
import { cpuSecondsOf, freePort, machineCpuSeconds, resultsFile, startMesh, type Mesh } from "./lib/mesh.js";
import { intFromEnv } from "./lib/env.js";
import { fmt, say } from "./lib/format.js";
import { signInBenchAdmin } from "./lib/sign-in.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const DEVICES = intFromEnv("BENCH_DEVICES", 40, 2, 10_000);
const SECONDS = intFromEnv("BENCH_SECONDS", 20, 1, 3600);
const WINDOW = intFromEnv("BENCH_WINDOW", 200, 1, 100_000);
const BATCH = intFromEnv("BENCH_BATCH", 100, 1, 500);
// Offered events/s of each paced phase, over all its devices; 0: no paced phases.
const RATE = intFromEnv("BENCH_RATE", 10_000, 0, 1_000_000);
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
  /** Paced phases only: the schedule, how far the senders fell behind it, and send -> ack. */
  paced?: PacedStats;
}

interface PacedStats {
  offered: number;
  /** How far sends went out after their scheduled time, ms (p99 where the sender keeps every lag). */
  lag: { p99?: number; max: number };
  /** Times a sender found its next send due and could not make it: window full or batch still out. */
  held: number;
  /** Cores busy with work other than the mesh and this bench over the phase (other sessions' tests). */
  otherCores: number;
  /** From scheduled send to acknowledgement, ms. */
  ack: { p50: number; p99: number };
}

/** What a phase's senders hand back, all devices together. */
interface PhaseRun {
  acked: number;
  errors: number;
  paced?: Omit<PacedStats, "offered" | "otherCores">;
  /** CPU of a load generator running in a process of its own, seconds (counted with the bench's). */
  generatorCpuSeconds?: number;
  /** From the first send to the last acknowledgement, when the senders timed it themselves (a forked generator starts late). */
  seconds?: number;
}

/** What one device's run hands back; the paced ones also their lags and send -> ack times. */
interface DeviceRun {
  acked: number;
  errors: number;
  lagMs?: number[];
  ackMs?: number[];
  held?: number;
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

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The next BATCH events of `d`, stamped `eventTime`, as one PublishEvents; moves `d.next` past what was acknowledged and answers how many that was. */
async function publishBatch(gateway: string, d: Device, eventTime: string): Promise<number> {
  const events = Array.from({ length: BATCH }, (_, i) => {
    const seq = d.next + i;
    return {
      deviceId: d.id,
      sequence: String(seq),
      clientId: `b${seq}`,
      eventTime,
      readings: { pulse: 60 + (seq % 40), spo2: 90 + (seq % 10) },
    };
  });
  const res = await connectJson<{ ackedSequence: string }>(
    gateway,
    "medmesh.devices.v1.DeviceService/PublishEvents",
    { events },
    d.token,
  );
  const now = Number(res.ackedSequence);
  const acked = now - (d.next - 1);
  d.next = now + 1;
  return acked;
}

async function batchDevice(gateway: string, d: Device, until: number): Promise<{ acked: number; errors: number }> {
  let acked = 0;
  let errors = 0;
  while (Date.now() < until) {
    try {
      acked += await publishBatch(gateway, d, new Date().toISOString());
    } catch {
      errors++;
    }
  }
  return { acked, errors };
}

/**
 * The stream devices, all at once, from bench/lib/h2-bidi-load.ts (a process writing the HTTP/2
 * frames itself, one connection per device as a fleet would have): closed loop with WINDOW events
 * unacknowledged, or paced at `ratePerDevice`. Each device's sequence carries on from `d.next`.
 */
async function runStreams(
  gateway: string,
  devices: Device[],
  durationMs: number,
  ratePerDevice?: number,
): Promise<PhaseRun> {
  const r = await bidiStreamsLoad({
    origin: gateway,
    path: "/medmesh.devices.v1.DeviceService/StreamEvents",
    devices: devices.map((d) => ({ deviceId: d.id, authorization: `Bearer ${d.token}`, firstSequence: d.next })),
    connections: devices.length,
    durationMs,
    window: WINDOW,
    ratePerDevice,
  });
  for (const [i, d] of devices.entries()) {
    const got = r.devices[i]!;
    d.next = got.nextSequence;
    if (got.error) say(`stream of ${d.id} ended: ${got.error}`);
  }
  return {
    acked: r.acked,
    errors: r.devices.filter((d) => d.error).length,
    generatorCpuSeconds: r.generatorCpuSeconds,
    seconds: r.seconds,
    paced: ratePerDevice
      ? {
          lag: { max: r.maxLagMs },
          held: r.windowBlocked,
          ack: { p50: r.ackLatencyMs.p50, p99: r.ackLatencyMs.p99 },
        }
      : undefined,
  };
}

/** Runs `run` for every device at once and sums what they hand back. */
function eachDevice(
  devices: Device[],
  run: (d: Device, t0: number, until: number, index: number) => Promise<DeviceRun>,
): (t0: number, until: number) => Promise<PhaseRun> {
  return async (t0, until) => {
    const results = await Promise.all(devices.map((d, i) => run(d, t0, until, i)));
    const lags = sorted(results.map((r) => r.lagMs));
    const acks = sorted(results.map((r) => r.ackMs));
    return {
      acked: results.reduce((a, r) => a + r.acked, 0),
      errors: results.reduce((a, r) => a + r.errors, 0),
      paced:
        lags.length > 0
          ? {
              lag: { p99: percentile(lags, 99), max: percentile(lags, 100) },
              held: results.reduce((a, r) => a + (r.held ?? 0), 0),
              ack: { p50: percentile(acks, 50), p99: percentile(acks, 99) },
            }
          : undefined,
    };
  };
}

/**
 * One device's Connect batches, open loop: batch k (BATCH events, stamped with its scheduled time)
 * is due at `start + k * interval`. One batch is out at a time (a device's sequence must arrive in
 * order), so a slow answer makes the next batch late, counted in `held` and in its lag.
 */
async function pacedBatchDevice(
  gateway: string,
  d: Device,
  start: number,
  interval: number,
  until: number,
): Promise<DeviceRun> {
  let acked = 0;
  let errors = 0;
  let held = 0;
  const lagMs: number[] = [];
  const ackMs: number[] = [];
  for (let k = 0; start + k * interval < until; k++) {
    const due = start + k * interval;
    const wait = due - Date.now();
    if (wait > 0) await sleep(wait);
    else if (k > 0) held++;
    lagMs.push(Date.now() - due);
    try {
      const n = await publishBatch(gateway, d, new Date(due).toISOString());
      const took = Date.now() - due;
      for (let i = 0; i < n; i++) ackMs.push(took);
      acked += n;
    } catch {
      errors++;
    }
  }
  return { acked, errors, lagMs, ackMs, held };
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

/** CPU seconds so far of every mesh process, and of this process (the load generator) as "bench". */
function cpuOf(mesh: Mesh): Record<string, number> {
  const { user, system } = process.cpuUsage();
  return {
    ...Object.fromEntries(Object.entries(mesh.pids).map(([name, pid]) => [name, cpuSecondsOf(pid)])),
    bench: (user + system) / 1e6,
  };
}

/**
 * CPU seconds of every process on the machine by pid (with its command line), and the machine's
 * softirq and steal time: where "other work" went, when a phase's busy cores are not all ours.
 */
function machineSnapshot() {
  const procs = new Map<number, { cpu: number; cmd: string }>();
  for (const name of fs.readdirSync("/proc")) {
    const pid = Number(name);
    if (!Number.isInteger(pid)) continue;
    const cpu = cpuSecondsOf(pid);
    if (!Number.isFinite(cpu)) continue;
    let cmd = "";
    try {
      cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ").trim();
    } catch {
      continue;
    }
    procs.set(pid, { cpu, cmd });
  }
  const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  const ticks = 100;
  return { procs, softirq: (f[6] ?? 0) / ticks, steal: (f[7] ?? 0) / ticks };
}

/** The busiest processes that are not the mesh's or this bench's, and softirq and steal, in cores. */
function otherWork(
  a: ReturnType<typeof machineSnapshot>,
  b: ReturnType<typeof machineSnapshot>,
  ours: Set<number>,
  wall: number,
) {
  const top = [...b.procs]
    .filter(([pid]) => !ours.has(pid))
    .map(([pid, p]) => ({ cmd: p.cmd, cores: (p.cpu - (a.procs.get(pid)?.cpu ?? 0)) / wall }))
    .filter((p) => p.cores >= 0.02)
    .sort((x, y) => y.cores - x.cores)
    .slice(0, 4);
  return (
    `softirq ${fmt((b.softirq - a.softirq) / wall, 2)}, steal ${fmt((b.steal - a.steal) / wall, 2)}` +
    top.map((p) => `; ${fmt(p.cores, 2)} ${p.cmd.slice(0, 90)}`).join("")
  );
}

const sorted = (parts: (number[] | undefined)[]) => {
  const all = new Float64Array(parts.reduce((a, p) => a + (p?.length ?? 0), 0));
  let i = 0;
  for (const p of parts) for (const v of p ?? []) all[i++] = v;
  return all.sort();
};

/**
 * Runs `run` for every device at once, from t0 to t0 + SECONDS (paced runs: until their last
 * scheduled send is acknowledged), waits for the worker to apply every acknowledged event, and
 * measures send -> applied from the history. `offered` marks a paced phase.
 */
async function phase(
  name: string,
  mesh: Mesh,
  db: pg.Client,
  devices: Device[],
  run: (t0: number, until: number) => Promise<PhaseRun>,
  offered?: number,
): Promise<PhaseResult> {
  say(`${name}: ${devices.length} devices for ${SECONDS} s${offered ? `, ${offered} events/s offered` : ""}`);
  const since = new Date();
  const cpu0 = cpuOf(mesh);
  const machine0 = machineCpuSeconds().busy;
  const snapshot0 = machineSnapshot();
  // Paced devices start a moment later, so the first due events are not already late.
  const t0 = Date.now() + (offered ? 100 : 0);
  const ran = await run(t0, t0 + SECONDS * 1000);
  const seconds = ran.seconds ?? (Date.now() - t0) / 1000;
  const { acked, errors } = ran;
  const ids = devices.map((d) => d.id);
  await waitApplied(db, ids, since, acked);
  const cpu1 = cpuOf(mesh);
  const machine = machineCpuSeconds().busy - machine0;
  const wall = (Date.now() - since.getTime()) / 1000;
  const ours = new Set([process.pid, ...Object.values(mesh.pids)]);
  const others = otherWork(snapshot0, machineSnapshot(), ours, wall);
  const l = await latencies(db, ids, since);
  const cpu = Object.fromEntries(Object.keys(cpu1).map((k) => [k, (cpu1[k] ?? 0) - (cpu0[k] ?? 0)]));
  cpu.bench = (cpu.bench ?? 0) + (ran.generatorCpuSeconds ?? 0);
  // Busy cores not ours (other sessions' tests and benches): what the bench can not hold still.
  const otherCores = (machine - Object.values(cpu).reduce((a, c) => a + (Number.isFinite(c) ? c : 0), 0)) / wall;
  const result: PhaseResult = {
    name,
    devices: devices.length,
    acked,
    seconds,
    errors,
    latency: { p50: Number(l.p50), p99: Number(l.p99), max: Number(l.max), count: Number(l.n) },
    drainSeconds: Math.max(0, (new Date(l.last).getTime() - (t0 + seconds * 1000)) / 1000),
    cpu,
  };
  say(
    `${name}: ${fmt(acked / seconds, 0)} events/s acknowledged (${acked} in ${fmt(seconds)} s, ${errors} errors); ` +
      `send -> applied p50 ${fmt(l.p50)} ms, p99 ${fmt(l.p99)} ms over ${l.n} events; other work ${fmt(otherCores, 2)} cores (${others})`,
  );
  if (offered) {
    result.paced = { offered, ...ran.paced!, otherCores };
    const p = result.paced;
    say(
      `${name}: sender behind schedule p99 ${p.lag.p99 === undefined ? "-" : fmt(p.lag.p99)} ms, max ${fmt(p.lag.max)} ms, ` +
        `held ${p.held} times; send -> ack p50 ${fmt(p.ack.p50)} ms, p99 ${fmt(p.ack.p99)} ms; ` +
        `cores busy: ${Object.entries(result.cpu)
          .filter(([, s]) => s > 0.05)
          .map(([n, s]) => `${n} ${fmt(s / wall, 2)}`)
          .join(", ")}`,
    );
    // Where the tail sits in time: the seconds of the schedule with the worst p99 send -> applied.
    const worst = await db.query<{ s: number; p99: number; n: string }>(
      `select extract(epoch from date_trunc('second', event_time)) - $3::float8 / 1000 s,
              percentile_cont(0.99) within group (order by extract(epoch from applied_at - event_time) * 1000) p99, count(*) n
         from devices.device_event where device_id = any($1::uuid[]) and event_time >= $2
        group by 1 order by 2 desc limit 5`,
      [ids, since, t0],
    );
    say(
      `${name}: worst seconds (s after start: p99 ms): ${worst.rows.map((r) => `${fmt(Number(r.s), 0)}: ${fmt(Number(r.p99), 0)}`).join(", ")}`,
    );
  }
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
    const streams = await phase("gRPC streams", mesh, db, devices.slice(0, half), (_t0, until) =>
      runStreams(gateway, devices.slice(0, half), until - Date.now()),
    );
    const batches = await phase(
      "Connect batches",
      mesh,
      db,
      devices.slice(half),
      eachDevice(devices.slice(half), (d, _t0, until) => batchDevice(gateway, d, until)),
    );
    // Open loop at RATE: the same devices, whose sequences carry on from d.next. Each device's
    // schedule is offset by its share of one interval, so the devices' sends interleave rather
    // than arrive together.
    const paced: PhaseResult[] = [];
    if (RATE > 0) {
      const streamDevices = devices.slice(0, half);
      const every = (1000 * streamDevices.length) / RATE;
      paced.push(
        await phase(
          "gRPC streams, paced",
          mesh,
          db,
          streamDevices,
          (_t0, until) => runStreams(gateway, streamDevices, until - Date.now(), RATE / streamDevices.length),
          RATE,
        ),
      );
      const batchDevices = devices.slice(half);
      const batchEvery = (1000 * BATCH * batchDevices.length) / RATE;
      paced.push(
        await phase(
          "Connect batches, paced",
          mesh,
          db,
          batchDevices,
          eachDevice(batchDevices, (d, t0, until, i) =>
            pacedBatchDevice(gateway, d, t0 + (i * batchEvery) / batchDevices.length, batchEvery, until),
          ),
          RATE,
        ),
      );
    }

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
        label: `${READ_REPLICAS} ${READ_REPLICAS === 1 ? "replica" : "replicas"}, cache in Redis (with in-process copies)`,
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

    const cpuPerEvent = (r: PhaseResult) =>
      Object.entries(r.cpu)
        .filter(([, s]) => s > 0.05)
        .map(([n, s]) => `${n} ${fmt((s / r.acked) * 1e6, 0)}`)
        .join(", ");
    const row = (r: PhaseResult) =>
      `| ${r.name} | ${r.devices} | ${fmt(r.acked / r.seconds, 0)} | ${r.errors} | ${fmt(r.latency.p50)} | ${fmt(r.latency.p99)} | ${fmt(r.latency.max)} | ${fmt(r.drainSeconds, 2)} | ${cpuPerEvent(r)} |`;
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
      ...(paced.length > 0
        ? [
            `Paced, open loop: the same devices again, sending ${RATE} events/s in all on a fixed schedule (each device its share, ` +
              `its sends offset within one interval from the others'); every event is stamped with its scheduled send time, ` +
              `so a sender that falls behind counts its delay in the latency instead of hiding it. Streams keep at most ` +
              `${WINDOW} unacknowledged only as a safety bound; a batch device has one batch of ${BATCH} out at a time. ` +
              "The closed-loop rows above measure throughput (each device keeps its window full, so their latency is mostly " +
              "time queued inside that window); these measure latency at a given rate.",
            "",
            "| paced path | devices | offered events/s | achieved acked events/s | errors | send→ack p50 ms | p99 ms | send→applied p50 ms | p99 ms | max ms | worker behind at end s | sender behind schedule p99 / max ms | held by window or batch out | other load (cores) | CPU µs per event |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ...paced.map((r) => {
              const p = r.paced!;
              return `| ${r.name} | ${r.devices} | ${p.offered} | ${fmt(r.acked / r.seconds, 0)} | ${r.errors} | ${fmt(p.ack.p50)} | ${fmt(p.ack.p99)} | ${fmt(r.latency.p50)} | ${fmt(r.latency.p99)} | ${fmt(r.latency.max)} | ${fmt(r.drainSeconds, 2)} | ${p.lag.p99 === undefined ? "–" : fmt(p.lag.p99)} / ${fmt(p.lag.max)} | ${p.held} | ${fmt(p.otherCores, 2)} | ${cpuPerEvent(r)} |`;
            }),
            "",
          ]
        : []),
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
      ...(reads.length > 1
        ? [
            // Replicas of an uncached service contend with each other and the database for the
            // same 2 cores, so the harder comparison is the best of each side, whatever its shape.
            `Best cached / best uncached, whatever the replicas: ${fmt(Math.max(...reads.map((r) => rps(r.cached))) / Math.max(...reads.map((r) => rps(r.uncached))), 2)}x in req/s.`,
          ]
        : []),
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
