import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { cpuSecondsOf } from "./mesh.js";

/** Absolute path of an executable on PATH, or undefined. */
export function which(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

export function versionOf(tool: string, args: string[]): string {
  const r = spawnSync(tool, args, { encoding: "utf8", timeout: 5_000 });
  return (
    ((r.stdout ?? "") + (r.stderr ?? ""))
      .split("\n")
      .find((l) => l.trim())
      ?.trim() ?? "unknown"
  );
}

/** The 5-byte gRPC length prefix (uncompressed) followed by the message. */
export function grpcFrame(message: Uint8Array): Buffer {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt8(0, 0);
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, 5);
  return frame;
}

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
  /** CPU the tool used, from /proc polled while it ran (the last poll is at most 100 ms old). */
  cpuSeconds: number;
}

/** Runs a tool to completion, killing it if it overruns: a wedged load generator must not hang the run. */
export function run(cmd: string, args: string[], opts: { timeoutMs: number; env?: NodeJS.ProcessEnv }): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: opts.env ?? process.env });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    // Once the child has exited it is reaped and its /proc entry is gone, so its CPU time can
    // only be read while it runs.
    let cpuSeconds = 0;
    const poll = setInterval(() => {
      const c = cpuSecondsOf(child.pid!);
      if (Number.isFinite(c)) cpuSeconds = c;
    }, 100);
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs);
    child.once("error", (err) => {
      clearTimeout(timer);
      clearInterval(poll);
      reject(err);
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      clearInterval(poll);
      resolve({ code, stdout, stderr, cpuSeconds });
    });
  });
}

export interface ToolResult {
  /** Successful requests in the measured window. */
  ok: number;
  durationSeconds: number;
  p50Ms: number;
  p99Ms: number;
  /** Anything that was not a success, by kind; empty when every request succeeded. */
  failures: Record<string, number>;
  /** CPU the load generator itself used, warm-up included. */
  generatorCpuSeconds: number;
}

export interface H2loadRun {
  url: string;
  bodyFile: string;
  clients: number;
  streamsPerClient: number;
  seconds: number;
  /** Length of the DATA a successful response carries (one gRPC frame), measured beforehand. */
  okResponseDataBytes: number;
  logFile: string;
  /** Requests per second each client sends (h2load --rps); unset sends as fast as answers come. */
  rpsPerClient?: number;
}

function h2loadArgs(r: H2loadRun, seconds: number, logFile?: string): string[] {
  return [
    "-t",
    "1",
    "-c",
    String(r.clients),
    "-m",
    String(r.streamsPerClient),
    "-D",
    String(seconds),
    ...(r.rpsPerClient ? [`--rps=${r.rpsPerClient}`] : []),
    "-d",
    r.bodyFile,
    "-H",
    "content-type: application/grpc",
    "-H",
    "te: trailers",
    // Every documents RPC needs a signed-in caller; the harness signs in before it loads.
    ...(process.env.BENCH_AUTHORIZATION ? ["-H", `authorization: ${process.env.BENCH_AUTHORIZATION}`] : []),
    ...(logFile ? [`--log-file=${logFile}`] : []),
    r.url,
  ];
}

/**
 * Runs h2load for a warm-up and then for the measured window, as two runs: h2load's own
 * --warm-up-time leaves warm-up bytes in the traffic totals the gRPC check below relies on.
 *
 * h2load knows HTTP, not gRPC: a failed call is still :status 200, with grpc-status in the
 * trailers and, from both grpc-js and connect-node, no DATA at all. Every successful
 * GetDocument here returns the same frame, so DATA bytes / frame length is the number of
 * calls that really succeeded.
 */
export async function runH2load(r: H2loadRun, warmupSeconds: number): Promise<ToolResult> {
  const timeoutMs = (s: number) => (s + 20) * 1000;
  const warm =
    warmupSeconds > 0
      ? await run("h2load", h2loadArgs(r, warmupSeconds), { timeoutMs: timeoutMs(warmupSeconds) })
      : undefined;
  // h2load appends to an existing log file; a leftover would mix runs.
  fs.rmSync(r.logFile, { force: true });
  const out = await run("h2load", h2loadArgs(r, r.seconds, r.logFile), { timeoutMs: timeoutMs(r.seconds) });
  const text = out.stdout + out.stderr;
  const requests =
    /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(
      text,
    );
  const statuses = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(text);
  const data = /traffic: .*?, \S+ \((\d+)\) data/.exec(text);
  if (out.code !== 0 || !requests || !statuses || !data) {
    throw new Error(`h2load failed (exit ${out.code}):\n${text.trim().split("\n").slice(-12).join("\n")}`);
  }
  const [failed, errored, timedOut] = [requests[5], requests[6], requests[7]].map(Number) as [number, number, number];
  const http2xx = Number(statuses[1]);
  const grpcOk = Math.floor(Number(data[1]) / r.okResponseDataBytes);
  const failures: Record<string, number> = {};
  const note = (k: string, n: number) => n > 0 && (failures[k] = n);
  note("h2load failed", failed);
  note("h2load errored", errored);
  note("h2load timeout", timedOut);
  note("HTTP non-2xx", Number(statuses[2]) + Number(statuses[3]) + Number(statuses[4]) + Number(statuses[5]));
  note("grpc-status != 0 (200 without a message)", http2xx - grpcOk);

  // The log has one row per finished stream: start µs, HTTP status, µs to end of response.
  const latencies: number[] = [];
  for (const line of fs.readFileSync(r.logFile, "utf8").split("\n")) {
    const [, status, micros] = line.split("\t");
    if (status === "200") latencies.push(Number(micros) / 1000);
  }
  latencies.sort((a, b) => a - b);
  return {
    ok: Math.min(grpcOk, http2xx),
    durationSeconds: r.seconds,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    failures,
    generatorCpuSeconds: (warm?.cpuSeconds ?? 0) + out.cpuSeconds,
  };
}

export interface WrkRun {
  url: string;
  method: "GET" | "POST";
  body?: string;
  connections: number;
  threads: number;
  seconds: number;
  script: string;
}

interface WrkReport {
  requests: number;
  duration_us: number;
  non2xx: number;
  connect: number;
  read: number;
  write: number;
  timeout: number;
  p50_us: number;
  p99_us: number;
  max_us: number;
}

function wrkArgs(r: WrkRun, seconds: number): string[] {
  return [
    "-t",
    String(r.threads),
    "-c",
    String(r.connections),
    "-d",
    `${seconds}s`,
    "--timeout",
    "10s",
    "-s",
    r.script,
    r.url,
  ];
}

export async function runWrk(r: WrkRun, warmupSeconds: number): Promise<ToolResult> {
  const env = { ...process.env, BENCH_METHOD: r.method, BENCH_BODY: r.body ?? "" };
  const timeoutMs = (s: number) => (s + 20) * 1000;
  const warm =
    warmupSeconds > 0
      ? await run("wrk", wrkArgs(r, warmupSeconds), { timeoutMs: timeoutMs(warmupSeconds), env })
      : undefined;
  const out = await run("wrk", wrkArgs(r, r.seconds), { timeoutMs: timeoutMs(r.seconds), env });
  const line = /^BENCH_RESULT (\{.*\})$/m.exec(out.stdout);
  if (out.code !== 0 || !line)
    throw new Error(
      `wrk failed (exit ${out.code}):\n${(out.stdout + out.stderr).trim().split("\n").slice(-12).join("\n")}`,
    );
  const rep = JSON.parse(line[1]!) as WrkReport;
  const failures: Record<string, number> = {};
  const note = (k: string, n: number) => n > 0 && (failures[k] = n);
  note("HTTP status >= 400", rep.non2xx);
  note("socket connect errors", rep.connect);
  note("socket read errors", rep.read);
  note("socket write errors", rep.write);
  note("timeouts", rep.timeout);
  return {
    // wrk counts every response it parsed, failures included.
    ok: rep.requests - rep.non2xx,
    durationSeconds: rep.duration_us / 1e6,
    p50Ms: rep.p50_us / 1000,
    p99Ms: rep.p99_us / 1000,
    failures,
    generatorCpuSeconds: (warm?.cpuSeconds ?? 0) + out.cpuSeconds,
  };
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}
