/**
 * What each layer of the mesh costs on the smallest call there is, side by side in one run:
 * `npm run bench:mesh`. MeshTestService.Echo("hello") against, each as its own process
 * (bench/lib/mesh-servers.ts):
 *
 * - bare node:http2 answering a fixed gRPC frame: the ceiling Node itself sets;
 * - raw grpc-js with a protobuf-es codec: what the platform stack is held against;
 * - the platform stack (startGrpcServer + meshInterceptors), telemetry off, on without an
 *   exporter (every component's default) and on with an OTLP exporter to a local sink;
 * - a bare node:http2 forwarder in front of the platform stack: the floor for any gateway on node:http2;
 * - the gateway in front of the platform stack (telemetry on), over gRPC, over Connect JSON
 *   POST (wrk) and with 1,000 streams in flight (p99);
 * - 1,000 streams open (10 connections x 100) but paced below capacity (h2load --rps), through
 *   the gateway and straight to the platform stack: there p99 is the path's own latency rather
 *   than the queue a saturated row measures (streams / throughput).
 *
 * Every request shape is proven with a real call first. CPU per call is the server process(es)'
 * user+system time from /proc/<pid>/stat over the measured window, divided by the calls.
 *
 * BENCH_SECONDS (5), BENCH_WARMUP_SECONDS (2, before each row), BENCH_H2_CLIENTS (4) and
 * BENCH_H2_STREAMS (16) shape the loads; BENCH_WIDE_CLIENTS (10) x BENCH_WIDE_STREAMS (100) the
 * wide one; BENCH_PACED_RPS (1000; a comma-separated list gives a row per rate) the total rate of
 * the paced rows, spread over the wide shape's connections; BENCH_WRK_CONNECTIONS (64); BENCH_QUIET_WAIT_SECONDS (5) bounds the wait for an idle
 * machine before each row; BENCH_ROWS (comma-separated row ids) runs a subset; BENCH_ROUNDS (1)
 * runs the rows that many times in turn and keeps each row's fastest round;
 * BENCH_BASELINE_ROOT (another checkout, e.g. /work/main) adds its platform stack and its gateway (in
 * front of this tree's platform) as extra rows;
 * a root that holds bench/lib/mesh-servers.js (a tree compiled ahead of time, e.g. with esbuild)
 * runs as plain JavaScript without tsx, which measures what tsx's transpilation costs per call;
 * BENCH_CPU_PROF_DIR starts every platform process and the gateway with --cpu-prof writing there.
 */
import { fork, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { intFromEnv } from "./lib/env.js";
import { fmt, say } from "./lib/format.js";
import { cpuSecondsOf, machineCpuSeconds, QUIET_CORES, waitForQuiet } from "./lib/mesh.js";
import { runH2load, runWrk, versionOf, which, type ToolResult } from "./lib/tools.js";
import { rawGrpcCall } from "./lib/verify.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const ECHO_PATH = "/medmesh.meshtest.v1.MeshTestService/Echo";
/** EchoRequest{text:"hello"} as one gRPC frame; the response is the same bytes (EchoResponse has the same shape). */
const HELLO_FRAME = Buffer.from("00000000070a0568656c6c6f", "hex");
const CONNECT_BODY = JSON.stringify({ text: "hello" });

const SECONDS = intFromEnv("BENCH_SECONDS", 5, 1, 60);
const WARMUP_SECONDS = intFromEnv("BENCH_WARMUP_SECONDS", 2, 0, 60);
const H2_CLIENTS = intFromEnv("BENCH_H2_CLIENTS", 4, 1, 64);
const H2_STREAMS = intFromEnv("BENCH_H2_STREAMS", 16, 1, 1000);
const WIDE_CLIENTS = intFromEnv("BENCH_WIDE_CLIENTS", 10, 1, 100);
const WIDE_STREAMS = intFromEnv("BENCH_WIDE_STREAMS", 100, 1, 1000);
const PACED_RPS = (process.env.BENCH_PACED_RPS ?? "1000")
  .split(",")
  .map((s) => Number(s.trim()))
  .filter((n) => Number.isInteger(n) && n > 0);
const WRK_CONNECTIONS = intFromEnv("BENCH_WRK_CONNECTIONS", 64, 1, 1000);
const QUIET_WAIT_SECONDS = intFromEnv("BENCH_QUIET_WAIT_SECONDS", 5, 0, 600);
const ROUNDS = intFromEnv("BENCH_ROUNDS", 1, 1, 10);
const ONLY = (process.env.BENCH_ROWS ?? "")
  .split(",")
  .map((s) => s.trim())
  .filter(Boolean);
const BASELINE_ROOT = process.env.BENCH_BASELINE_ROOT || undefined;
const PROF_DIR = process.env.BENCH_CPU_PROF_DIR || undefined;

interface Proc {
  name: string;
  child: ChildProcess;
  port: number;
}

/** Forks one server of bench/lib/mesh-servers.ts and waits until it listens. */
async function startServer(
  name: string,
  role: string,
  logFile: string,
  env: Record<string, string> = {},
  execArgv: string[] = [],
): Promise<Proc> {
  const log = fs.openSync(logFile, "a");
  // A code root compiled ahead of time (see BENCH_BASELINE_ROOT) runs as plain JavaScript, without tsx.
  const compiled = env.BENCH_CODE_ROOT && fs.existsSync(path.join(env.BENCH_CODE_ROOT, "bench/lib/mesh-servers.js"));
  const entry = compiled
    ? path.join(env.BENCH_CODE_ROOT!, "bench/lib/mesh-servers.js")
    : path.join(root, "bench/lib/mesh-servers.ts");
  const child = fork(entry, [role], {
    execArgv: compiled ? execArgv : ["--import", "tsx", ...execArgv],
    env: { ...process.env, LOG_LEVEL: "info", ...env },
    stdio: ["ignore", log, log, "ipc"],
  });
  fs.closeSync(log);
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start within 60 s (log: ${logFile})`)), 60_000);
    child.once("message", (m: { port?: number }) => {
      clearTimeout(timer);
      if (m.port) resolve(m.port);
      else reject(new Error(`${name} said ${JSON.stringify(m)}`));
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited during start (${signal ?? `code ${code}`}); log: ${logFile}`));
    });
  });
  return { name, child, port };
}

async function stopServer(p: Proc): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  const gone = new Promise<void>((r) => p.child.once("exit", () => r()));
  p.child.kill("SIGTERM");
  const bound = setTimeout(() => p.child.kill("SIGKILL"), 10_000);
  await gone;
  clearTimeout(bound);
}

interface RowSpec {
  id: string;
  path: string;
  generator: string;
  /** Processes whose CPU is the cost of this path. */
  servers: Proc[];
  /** Row whose req/s this one is compared with in the "vs platform" column. */
  tool: "h2load" | "wrk";
  /** Sent at a fixed rate (h2load --rps) rather than as fast as answers come. */
  paced?: boolean;
  load: () => Promise<ToolResult>;
}

interface Measured {
  result: ToolResult;
  /** Server CPU seconds per successful call, per process, over the measured window. */
  cpuPerCall: Record<string, number>;
  /** Event-loop delay and GC pauses of each server process over the measured window. */
  stalls: Record<string, Stalls | undefined>;
  /** Cores busy on the machine beyond the servers and the generator. */
  others: number;
  generatorCores: number;
}

interface Stalls {
  p99Ms: number;
  maxMs: number;
  gcMaxMs: number;
  gcTotalMs: number;
}

/** Asks a server for its event-loop delay and GC pauses since the last reset (mesh-servers.ts). */
function readStalls(p: Proc): Promise<Stalls | undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      p.child.off("message", onMessage);
      resolve(undefined);
    }, 2_000);
    const onMessage = (m: { stalls?: Stalls }) => {
      if (!m.stalls) return;
      clearTimeout(timer);
      p.child.off("message", onMessage);
      resolve(m.stalls);
    };
    p.child.on("message", onMessage);
    p.child.send({ stalls: "read" });
  });
}

interface Row {
  spec: RowSpec;
  outcome: { kind: "measured"; m: Measured } | { kind: "skipped" | "error"; reason: string };
}

async function measure(spec: RowSpec, warmup: () => Promise<unknown>): Promise<Row> {
  if (QUIET_WAIT_SECONDS > 0) {
    const q = await waitForQuiet(QUIET_WAIT_SECONDS);
    if (q.busyCores >= QUIET_CORES)
      say(`machine still busy (${fmt(q.busyCores, 2)} cores) after ${fmt(q.waitedSeconds, 0)}s; measuring anyway`);
  }
  say(`load: ${spec.path} with ${spec.generator} (${WARMUP_SECONDS}s warm-up + ${SECONDS}s)`);
  try {
    if (WARMUP_SECONDS > 0) await warmup();
    for (const s of spec.servers) s.child.send({ stalls: "reset" });
    const before = spec.servers.map((s) => cpuSecondsOf(s.child.pid!));
    const machineBefore = machineCpuSeconds();
    const t0 = performance.now();
    const result = await spec.load();
    const wall = (performance.now() - t0) / 1000;
    const after = spec.servers.map((s) => cpuSecondsOf(s.child.pid!));
    const stalls = Object.fromEntries(
      await Promise.all(spec.servers.map(async (s) => [s.name, await readStalls(s)] as const)),
    );
    const machine = (machineCpuSeconds().busy - machineBefore.busy) / wall;
    const serverSeconds = after.map((a, i) => a - before[i]!);
    const cpuPerCall = Object.fromEntries(spec.servers.map((s, i) => [s.name, serverSeconds[i]! / result.ok]));
    const generatorCores = result.generatorCpuSeconds / wall;
    const others = machine - generatorCores - serverSeconds.reduce((a, b) => a + b, 0) / wall;
    const total = Object.values(cpuPerCall).reduce((a, b) => a + b, 0);
    say(
      `  ${fmt(result.ok / result.durationSeconds, 0)} req/s, p50 ${fmt(result.p50Ms, 2)} ms, p99 ${fmt(result.p99Ms, 2)} ms, ` +
        `${fmt(total * 1e6, 0)} µs server CPU/call, failures: ${failuresText(result.failures)}`,
    );
    return { spec, outcome: { kind: "measured", m: { result, cpuPerCall, stalls, others, generatorCores } } };
  } catch (err) {
    say(`  ${(err as Error).message}`);
    return { spec, outcome: { kind: "error", reason: (err as Error).message } };
  }
}

/** A paced row sends the same rate every round, so its best round is the one with the lowest p99. */
function better(a: Row, b: Row): boolean {
  if (a.spec.paced && a.outcome.kind === "measured" && b.outcome.kind === "measured") {
    return a.outcome.m.result.p99Ms < b.outcome.m.result.p99Ms;
  }
  return rate(a) > rate(b);
}

function rate(r: Row): number {
  return r.outcome.kind === "measured" ? r.outcome.m.result.ok / r.outcome.m.result.durationSeconds : NaN;
}

function failuresText(f: Record<string, number>): string {
  const entries = Object.entries(f);
  return entries.length ? entries.map(([k, v]) => `${v} ${k}`).join(", ") : "0";
}

/** Proves a gRPC target answers h2load's exact bytes with grpc-status 0 and the expected frame. */
async function verifyGrpc(origin: string): Promise<string | undefined> {
  try {
    const reply = await rawGrpcCall(origin, ECHO_PATH, HELLO_FRAME);
    if (reply.httpStatus !== 200 || reply.grpcStatus !== "0")
      return `HTTP ${reply.httpStatus}, grpc-status ${reply.grpcStatus ?? "(none)"} ${reply.grpcMessage ?? ""}`;
    if (!reply.data.equals(HELLO_FRAME)) return `unexpected response DATA ${reply.data.toString("hex")}`;
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

async function verifyConnect(origin: string): Promise<string | undefined> {
  try {
    const res = await fetch(origin + ECHO_PATH, {
      method: "POST",
      headers: { "content-type": "application/json", "connect-protocol-version": "1" },
      body: CONNECT_BODY,
    });
    const text = await res.text();
    if (res.status !== 200 || (JSON.parse(text) as { text?: string }).text !== "hello")
      return `HTTP ${res.status} ${text.slice(0, 200)}`;
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

async function main() {
  const tools = { h2load: which("h2load"), wrk: which("wrk") };
  if (!tools.h2load) {
    say("h2load not found on PATH (Debian/Ubuntu: apt-get install nghttp2-client); nothing to measure");
    process.exit(2);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "medmesh-mesh-bench-"));
  const loadBefore = os.loadavg();
  const procs: Proc[] = [];
  let exitCode = 0;
  const stopAll = () => Promise.all(procs.map(stopServer));
  const onSignal = () => void stopAll().then(() => process.exit(130));
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    const logFile = path.join(dir, "servers.log");
    // A directory per process: the tsx loader thread writes a profile of its own beside the main one.
    const profArgs = (label: string) =>
      PROF_DIR ? ["--cpu-prof", `--cpu-prof-dir=${path.join(PROF_DIR, label)}`] : [];
    const start = async (name: string, role: string, env: Record<string, string> = {}, execArgv: string[] = []) => {
      const p = await startServer(name, role, logFile, env, execArgv);
      procs.push(p);
      return p;
    };
    say(`starting servers (logs: ${logFile})`);
    const sink = await start("otlp sink", "otlp-sink");
    const otlp = { BENCH_OTLP_ENDPOINT: `http://127.0.0.1:${sink.port}` };
    const bare = await start("bare http2", "bare");
    const raw = await start("raw grpc-js", "raw");
    const platformOff = await start(
      "platform (otel off)",
      "platform",
      { BENCH_TELEMETRY: "off" },
      profArgs("platform-off"),
    );
    const platformOn = await start(
      "platform (otel on)",
      "platform",
      { BENCH_TELEMETRY: "on" },
      profArgs("platform-on"),
    );
    const platformExport = await start("platform (otel export)", "platform", { BENCH_TELEMETRY: "export", ...otlp });
    const gateway = await start(
      "gateway",
      "gateway",
      { BENCH_UPSTREAM: `127.0.0.1:${platformOn.port}` },
      profArgs("gateway"),
    );
    const forwarder = await start("bare forwarder", "forwarder", { BENCH_UPSTREAM: `127.0.0.1:${platformOn.port}` });
    const baseline = BASELINE_ROOT
      ? {
          off: await start("baseline platform (otel off)", "platform", {
            BENCH_TELEMETRY: "off",
            BENCH_CODE_ROOT: BASELINE_ROOT,
          }),
          on: await start("baseline platform (otel on)", "platform", {
            BENCH_TELEMETRY: "on",
            BENCH_CODE_ROOT: BASELINE_ROOT,
          }),
          // The other tree's gateway in front of this tree's platform: only the gateway differs.
          gateway: await start("baseline gateway", "gateway", {
            BENCH_UPSTREAM: `127.0.0.1:${platformOn.port}`,
            BENCH_CODE_ROOT: BASELINE_ROOT,
          }),
        }
      : undefined;
    say(`servers up: ${procs.map((p) => `${p.name} :${p.port} (pid ${p.child.pid})`).join(", ")}`);

    const origin = (p: Proc) => `http://127.0.0.1:${p.port}`;
    const bodyFile = path.join(dir, "echo.grpc");
    fs.writeFileSync(bodyFile, HELLO_FRAME);
    const h2 = (p: Proc, clients = H2_CLIENTS, streams = H2_STREAMS, seconds = SECONDS, rpsPerClient?: number) =>
      runH2load(
        {
          url: origin(p) + ECHO_PATH,
          bodyFile,
          clients,
          streamsPerClient: streams,
          seconds,
          okResponseDataBytes: HELLO_FRAME.length,
          logFile: path.join(dir, "h2load.log"),
          rpsPerClient,
        },
        0,
      );
    const wrkPost = (seconds = SECONDS, target = gateway) =>
      runWrk(
        {
          url: origin(target) + ECHO_PATH,
          method: "POST",
          body: CONNECT_BODY,
          connections: WRK_CONNECTIONS,
          threads: 1,
          seconds,
          script: path.join(root, "bench/lib/wrk-connect.lua"),
        },
        0,
      );

    const h2Shape = `h2load, ${H2_CLIENTS} conn x ${H2_STREAMS} streams`;
    const wideShape = `h2load, ${WIDE_CLIENTS} conn x ${WIDE_STREAMS} streams`;
    const grpcRow = (id: string, label: string, servers: Proc[], target: Proc): RowSpec => ({
      id,
      path: label,
      generator: h2Shape,
      servers,
      tool: "h2load",
      load: () => h2(target),
    });
    const specs: (RowSpec & { warm: () => Promise<unknown>; verify: () => Promise<string | undefined> })[] = [];
    const add = (s: RowSpec, verify: () => Promise<string | undefined>, warm: () => Promise<unknown>) =>
      specs.push({ ...s, verify, warm });
    const plain = (s: RowSpec, target: Proc) =>
      add(
        s,
        () => verifyGrpc(origin(target)),
        () => h2(target, H2_CLIENTS, H2_STREAMS, WARMUP_SECONDS),
      );
    plain(grpcRow("bare", "bare node:http2, fixed frame", [bare], bare), bare);
    plain(grpcRow("raw", "raw grpc-js + protobuf-es", [raw], raw), raw);
    plain(grpcRow("platform-off", "platform stack, OTel off", [platformOff], platformOff), platformOff);
    plain(grpcRow("platform", "platform stack, OTel on (no exporter)", [platformOn], platformOn), platformOn);
    plain(
      grpcRow(
        "platform-export",
        "platform stack, OTel on, OTLP export to a local sink",
        [platformExport, sink],
        platformExport,
      ),
      platformExport,
    );
    if (baseline) {
      plain(
        grpcRow("baseline-off", `baseline (${BASELINE_ROOT}) platform stack, OTel off`, [baseline.off], baseline.off),
        baseline.off,
      );
      plain(
        grpcRow("baseline", `baseline (${BASELINE_ROOT}) platform stack, OTel on`, [baseline.on], baseline.on),
        baseline.on,
      );
    }
    plain(
      grpcRow("forwarder", "bare node:http2 forwarder -> platform stack (OTel on)", [forwarder, platformOn], forwarder),
      forwarder,
    );
    plain(grpcRow("gateway", "gateway gRPC -> platform stack (OTel on)", [gateway, platformOn], gateway), gateway);
    if (tools.wrk)
      add(
        {
          id: "gateway-connect",
          path: "gateway Connect JSON POST -> platform stack (OTel on)",
          generator: `wrk, ${WRK_CONNECTIONS} connections, HTTP/1.1`,
          servers: [gateway, platformOn],
          tool: "wrk",
          load: () => wrkPost(),
        },
        () => verifyConnect(origin(gateway)),
        () => wrkPost(WARMUP_SECONDS),
      );
    else say("wrk not found on PATH (Debian/Ubuntu: apt-get install wrk); the Connect row is skipped");
    if (baseline) {
      const other = baseline.gateway;
      plain(
        grpcRow(
          "baseline-gateway",
          `baseline (${BASELINE_ROOT}) gateway gRPC -> platform stack (OTel on)`,
          [other, platformOn],
          other,
        ),
        other,
      );
      if (tools.wrk)
        add(
          {
            id: "baseline-gateway-connect",
            path: `baseline (${BASELINE_ROOT}) gateway Connect JSON POST -> platform stack (OTel on)`,
            generator: `wrk, ${WRK_CONNECTIONS} connections, HTTP/1.1`,
            servers: [other, platformOn],
            tool: "wrk",
            load: () => wrkPost(SECONDS, other),
          },
          () => verifyConnect(origin(other)),
          () => wrkPost(WARMUP_SECONDS, other),
        );
    }
    add(
      {
        id: "gateway-wide",
        path: "gateway gRPC -> platform stack (OTel on), 1,000 streams in flight",
        generator: wideShape,
        servers: [gateway, platformOn],
        tool: "h2load",
        load: () => h2(gateway, WIDE_CLIENTS, WIDE_STREAMS),
      },
      () => verifyGrpc(origin(gateway)),
      () => h2(gateway, WIDE_CLIENTS, WIDE_STREAMS, WARMUP_SECONDS),
    );
    for (const total of PACED_RPS) {
      const perClient = Math.max(1, Math.round(total / WIDE_CLIENTS));
      const paced = `${wideShape}, paced at ${perClient * WIDE_CLIENTS} req/s (--rps ${perClient} per conn)`;
      const pacedRow = (id: string, label: string, servers: Proc[], target: Proc) =>
        add(
          {
            id,
            path: `${label}, 1,000 streams open, paced`,
            generator: paced,
            servers,
            tool: "h2load",
            paced: true,
            load: () => h2(target, WIDE_CLIENTS, WIDE_STREAMS, SECONDS, perClient),
          },
          () => verifyGrpc(origin(target)),
          () => h2(target, WIDE_CLIENTS, WIDE_STREAMS, WARMUP_SECONDS, perClient),
        );
      const suffix = PACED_RPS.length > 1 ? `-${total}` : "";
      pacedRow(`platform-paced${suffix}`, "platform stack (OTel on)", [platformOn], platformOn);
      pacedRow(`gateway-paced${suffix}`, "gateway gRPC -> platform stack (OTel on)", [gateway, platformOn], gateway);
    }

    // On a shared machine a row can land on a moment when someone else holds the cores; with
    // BENCH_ROUNDS > 1 the rows take turns and each keeps its fastest round.
    const rows: Row[] = [];
    const chosen = specs.filter((s) => !ONLY.length || ONLY.includes(s.id));
    for (let round = 1; round <= ROUNDS; round++) {
      if (ROUNDS > 1) say(`round ${round} of ${ROUNDS}`);
      for (const s of chosen) {
        const i = rows.findIndex((r) => r.spec.id === s.id);
        const keep = (row: Row) => {
          if (i < 0) rows.push(row);
          else if (row.outcome.kind !== "measured") return;
          else if (rows[i]!.outcome.kind !== "measured" || better(row, rows[i]!)) rows[i] = row;
        };
        if (i >= 0 && rows[i]!.outcome.kind === "skipped") continue;
        const broken = await s.verify();
        if (broken) {
          say(`VERIFY FAILED: ${s.path}: ${broken}`);
          keep({ spec: s, outcome: { kind: "skipped", reason: `verification failed: ${broken}` } });
          exitCode = 1;
          continue;
        }
        const dead = procs.find((p) => p.child.exitCode !== null || p.child.signalCode !== null);
        if (dead) {
          keep({ spec: s, outcome: { kind: "skipped", reason: `${dead.name} is gone` } });
          exitCode = 1;
          continue;
        }
        const row = await measure(s, s.warm);
        if (row.outcome.kind === "error") exitCode = 1;
        keep(row);
      }
    }

    const md = report({ rows, loadBefore, tools });
    fs.mkdirSync(path.join(root, "bench/results"), { recursive: true });
    fs.writeFileSync(path.join(root, "bench/results/mesh.md"), md);
    process.stdout.write(md);
  } catch (err) {
    say(`failed: ${(err as Error).stack ?? err}`);
    exitCode = 1;
  } finally {
    say("stopping servers");
    await stopAll();
    if (exitCode === 0) fs.rmSync(dir, { recursive: true, force: true });
    else say(`kept ${dir} (servers.log) for a look`);
  }
  process.exit(exitCode);
}

function report(input: { rows: Row[]; loadBefore: number[]; tools: Record<string, string | undefined> }): string {
  const { rows } = input;
  const cpus = os.cpus();
  const rate = (id: string) => {
    const r = rows.find((x) => x.spec.id === id);
    return r?.outcome.kind === "measured" ? r.outcome.m.result.ok / r.outcome.m.result.durationSeconds : NaN;
  };
  const rawRate = rate("raw");
  const platformRate = rate("platform");
  const lines: string[] = [];
  lines.push('# Mesh paths benchmark: unary MeshTestService.Echo("hello")', "");
  lines.push(
    `Run ${new Date().toISOString()} on ${cpus.length} x ${cpus[0]?.model?.trim() ?? "cpu"} (nproc ${os.availableParallelism()}), ` +
      `${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}.`,
  );
  lines.push(
    `Each row: ${WARMUP_SECONDS} s warm-up (discarded), ${SECONDS} s measured${ROUNDS > 1 ? `, best of ${ROUNDS} rounds taken in turn` : ""}. Every server is its own Node process; ` +
      `the generator (single-threaded h2load or wrk) shares the same ${cpus.length} cores.`,
  );
  lines.push(
    `Tools: ${input.tools.h2load ? versionOf("h2load", ["--version"]) : "h2load missing"}; ${input.tools.wrk ? versionOf("wrk", ["-v"]).replace(/ Copyright.*/, "") : "wrk missing"}. ` +
      `Load average before the run: ${input.loadBefore.map((l) => l.toFixed(2)).join(" ")}, after: ${os
        .loadavg()
        .map((l) => l.toFixed(2))
        .join(" ")}.`,
  );
  lines.push("");
  lines.push(
    "| path | load generator | req/s | vs raw grpc-js | vs platform stack | p50 ms | p99 ms | server CPU µs/call | loop delay p99 / max, longest GC (ms) | failed | other load (cores) |",
  );
  lines.push("|---|---|---:|---:|---:|---:|---:|---|---|---|---:|");
  for (const r of rows) {
    const o = r.outcome;
    if (o.kind !== "measured") {
      lines.push(
        `| ${r.spec.path} | ${r.spec.generator} | - | - | - | - | - | - | - | ${o.kind}: ${o.reason.replace(/\|/g, "\\|").replace(/\n/g, " ")} | - |`,
      );
      continue;
    }
    const x = o.m.result;
    const rps = x.ok / x.durationSeconds;
    const parts = Object.entries(o.m.cpuPerCall);
    const total = parts.reduce((a, [, v]) => a + v, 0);
    const cpu =
      parts.length === 1
        ? fmt(total * 1e6, 0)
        : `${fmt(total * 1e6, 0)} (${parts.map(([n, v]) => `${n} ${fmt(v * 1e6, 0)}`).join(", ")})`;
    const stalls = Object.entries(o.m.stalls)
      .map(([n, st]) =>
        st
          ? `${parts.length === 1 ? "" : `${n} `}${fmt(st.p99Ms, 0)} / ${fmt(st.maxMs, 0)}, GC ${fmt(st.gcMaxMs, 0)}`
          : `${n} -`,
      )
      .join("; ");
    lines.push(
      `| ${r.spec.path} | ${r.spec.generator} | ${fmt(rps, 0)} | ${fmt(rps / rawRate, 2)} | ${fmt(rps / platformRate, 2)} | ${fmt(x.p50Ms, 2)} | ${fmt(x.p99Ms, 2)} | ${cpu} | ${stalls} | ${failuresText(x.failures)} | ${fmt(o.m.others, 2)} |`,
    );
  }
  lines.push("");
  lines.push(
    '"platform stack" in the ratio column is the OTel-on row (no exporter): what every component runs by default. ' +
      "req/s counts successful calls only (h2load: HTTP 200 *and* the response frame, since a failed gRPC call is HTTP 200 " +
      "with grpc-status in trailers and no DATA; wrk: HTTP 200). Server CPU per call is user+system time of the server " +
      "process(es) of the path (/proc/<pid>/stat) over the measured window divided by the successful calls; for the " +
      "gateway rows it is gateway + platform process, for the export row platform + OTLP sink. Loop delay is how late " +
      "a 10 ms timer fired in each server process (perf_hooks.monitorEventLoopDelay: a GC pause, a long task, or the " +
      "process waiting for a core), longest GC the longest collector pause (PerformanceObserver), both over the " +
      "measured window: a call's latency includes every stall of every process on its path.",
  );
  const noisy = rows.filter((r) => r.outcome.kind === "measured" && r.outcome.m.others > 0.2);
  if (noisy.length)
    lines.push(
      "",
      `**Other work shared the machine** during ${noisy.length} row(s) ("other load" above 0.2 cores): absolute req/s ` +
        "there understate what the path can do; compare CPU per call, and rerun on a quiet machine before comparing runs.",
    );
  lines.push(
    "",
    "Rerun: `npm run bench:mesh` (needs `apt-get install nghttp2-client wrk`; BENCH_SECONDS, BENCH_WARMUP_SECONDS, " +
      "BENCH_H2_CLIENTS, BENCH_H2_STREAMS, BENCH_WIDE_CLIENTS, BENCH_WIDE_STREAMS, BENCH_PACED_RPS, BENCH_WRK_CONNECTIONS change the shape; " +
      "BENCH_ROWS picks rows (ids: bare, raw, platform-off, platform, platform-export, baseline-off, baseline, gateway, gateway-connect, baseline-gateway, baseline-gateway-connect, gateway-wide, platform-paced, gateway-paced; with several BENCH_PACED_RPS rates, platform-paced-<rate> and gateway-paced-<rate>); BENCH_ROUNDS=n keeps the best of n rounds (highest req/s; for paced rows lowest p99); BENCH_BASELINE_ROOT=<checkout> adds another tree's platform stack and gateway (in front of this tree's platform); BENCH_CPU_PROF_DIR profiles the platform processes and the gateway).",
  );
  return lines.join("\n") + "\n";
}

void main();
