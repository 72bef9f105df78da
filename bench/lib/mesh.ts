import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { components } from "../../platform/config/components.js";

/** A port the kernel just handed out on loopback; closed again so the mesh can bind it. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export interface Mesh {
  launcher: ChildProcess;
  /** Endpoint lines the launcher printed, by name (gateway, documents, postgres, ...). */
  endpoints: Record<string, string>;
  /** Component name to pid, for the processes the launcher forked. */
  pids: Record<string, number>;
  logFile: string;
  /** Why the mesh is no longer whole (a component stopping or gone), or undefined while it is. */
  damage(): string | undefined;
  stop(): Promise<void>;
}

export interface StartOptions {
  root: string;
  dataDir: string;
  /** Endpoint names that must all be printed before the mesh counts as up. */
  required: string[];
  timeoutMs: number;
  /** Extra environment for the launcher and so every component (e.g. UPLOAD_MAX_BYTES); wins over the bench's own. */
  env?: Record<string, string>;
  /** Node options for the launcher; its --cpu-prof flags pass on to every component it forks. */
  nodeArgs?: string[];
}

/**
 * Starts `npm start`'s launcher as a child (not through npm, so the pid we hold is the launcher
 * itself and SIGTERM reaches it directly) on free ports with its own data dir.
 */
export async function startMesh(opts: StartOptions): Promise<Mesh> {
  // A free port for every component the launcher may start: a developer's own mesh (or another
  // bench) may hold the defaults.
  const ports: Record<string, number> = {};
  for (const c of Object.values(components)) ports[c.portVariable] = await freePort();
  const logFile = path.join(opts.dataDir, "mesh.log");
  const log = fs.openSync(logFile, "a");
  const launcher = spawn(process.execPath, [...(opts.nodeArgs ?? []), "--import", "tsx", "deploy/embedded/launch.ts"], {
    cwd: opts.root,
    env: {
      ...process.env,
      MEDMESH_DATA_DIR: opts.dataDir,
      GATEWAY_HOST: "127.0.0.1",
      // One signed-in caller sends every request of the load: with the default buckets the
      // gateway would (rightly) refuse most of them. The limiter still runs on every call.
      RATE_LIMITS: "read=100000000:100000000,write=100000000:100000000,auth=1000:1000,upload=1000:1000",
      ...Object.fromEntries(Object.entries(ports).map(([k, v]) => [k, String(v)])),
      ...opts.env,
    },
    // Component logs go to a file: under load an error per call would otherwise flood the report.
    stdio: ["ignore", "pipe", log],
  });
  fs.closeSync(log);

  const endpoints: Record<string, string> = {};
  let exited = false;
  const exitPromise = new Promise<void>((resolve) => launcher.once("exit", () => ((exited = true), resolve())));

  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => fail(new Error(`mesh did not print ${opts.required.join(", ")} within ${opts.timeoutMs} ms`)),
      opts.timeoutMs,
    );
    let buffered = "";
    const onData = (d: Buffer) => {
      buffered += d.toString();
      let nl: number;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl).trim();
        buffered = buffered.slice(nl + 1);
        const m = /^(\S+) (\S+)$/.exec(line);
        if (m) endpoints[m[1]!] = m[2]!;
      }
      if (opts.required.every((k) => endpoints[k])) {
        clearTimeout(timer);
        launcher.stdout!.off("data", onData);
        launcher.off("exit", onExit);
        resolve();
      }
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
      clearTimeout(timer);
      reject(
        new Error(`mesh exited during start (${signal ?? `code ${code}`}); log: ${logFile}\n${tail(logFile, 15)}`),
      );
    };
    const fail = (err: Error) => {
      launcher.kill("SIGTERM");
      reject(err);
    };
    launcher.stdout!.on("data", onData);
    launcher.once("exit", onExit);
  });
  // Keep draining stdout so a chatty launcher never blocks on a full pipe.
  launcher.stdout!.resume();

  const pids = await componentPids(launcher.pid!, logFile);
  return {
    launcher,
    endpoints,
    pids,
    logFile,
    damage() {
      if (exited) return `the launcher exited (${launcher.signalCode ?? `code ${launcher.exitCode}`})`;
      // A component that was signalled says so in its log before it is gone; that line also
      // names the reason, which a vanished pid alone would not.
      const stopping = fs
        .readFileSync(logFile, "utf8")
        .split("\n")
        .filter((l) => l.includes('"msg":"stopping"') || l.includes("exited unexpectedly"));
      if (stopping.length) return `mesh stopped by someone else: ${stopping.map((l) => l.slice(0, 200)).join(" / ")}`;
      const gone = Object.entries(pids).filter(([, pid]) => !alive(pid));
      if (gone.length) return `mesh process(es) gone: ${gone.map(([n, p]) => `${n} (${p})`).join(", ")}`;
      return undefined;
    },
    async stop() {
      if (exited) return;
      launcher.kill("SIGTERM");
      // The launcher gives each component up to 15 s; past that something is stuck and the
      // children must not outlive the benchmark.
      const timer = setTimeout(() => {
        for (const pid of childrenOf(launcher.pid!)) tryKill(pid);
        launcher.kill("SIGKILL");
      }, 45_000);
      await exitPromise;
      clearTimeout(timer);
    },
  };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function tryKill(pid: number) {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // already gone
  }
}

export function tail(file: string, lines: number): string {
  try {
    return fs.readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  }
}

/** Direct children of a process, from /proc (every thread lists the children it forked). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      const text = fs.readFileSync(`/proc/${pid}/task/${tid}/children`, "utf8").trim();
      if (text) out.push(...text.split(/\s+/).map(Number));
    }
  } catch {
    // not Linux, or the process is gone
  }
  return out;
}

/**
 * Names the launcher's children. The launcher logs a pid map once ready; it is written a moment
 * after the endpoint lines, so it is polled for briefly. Without it, children are named by the
 * entry file on their command line.
 */
async function componentPids(launcherPid: number, logFile: string): Promise<Record<string, number>> {
  for (let i = 0; i < 20; i++) {
    for (const line of fs.readFileSync(logFile, "utf8").split("\n").reverse()) {
      if (!line.includes('"pids"')) continue;
      try {
        const parsed = JSON.parse(line) as { pids?: Record<string, number> };
        if (parsed.pids) return parsed.pids;
      } catch {
        // a line cut in half by a concurrent write; try again
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const named: Record<string, number> = {};
  for (const pid of childrenOf(launcherPid)) {
    try {
      const cmd =
        fs
          .readFileSync(`/proc/${pid}/cmdline`, "utf8")
          .split("\0")
          .find((a) => a.endsWith(".ts")) ?? `pid-${pid}`;
      named[path.basename(path.dirname(cmd)) + "/" + path.basename(cmd, ".ts")] = pid;
    } catch {
      // exited meanwhile
    }
  }
  return named;
}

export interface ProcMemory {
  rssBytes: number;
  /** Peak RSS over the process's life (VmHWM). */
  peakBytes: number;
}

export function memoryOf(pid: number): ProcMemory | undefined {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN) * 1024;
    return { rssBytes: kb("VmRSS"), peakBytes: kb("VmHWM") };
  } catch {
    return undefined;
  }
}

const TICKS_PER_SECOND = 100; // USER_HZ; 100 on every Linux this runs on

/** User + system CPU seconds a process has used so far. */
export function cpuSecondsOf(pid: number): number {
  try {
    const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
  } catch {
    return NaN;
  }
}

/** Busy and total CPU seconds of the whole machine, summed over cores. */
export function machineCpuSeconds(): { busy: number; total: number } {
  try {
    const cpu = fs.readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
    const total = cpu.reduce((a, b) => a + b, 0);
    const idle = (cpu[3] ?? 0) + (cpu[4] ?? 0);
    return { busy: (total - idle) / TICKS_PER_SECOND, total: total / TICKS_PER_SECOND };
  } catch {
    return { busy: NaN, total: NaN };
  }
}

/** Below this many busy cores the machine counts as idle (an idle mesh and the odd daemon stay well below it). */
export const QUIET_CORES = 0.3;

/**
 * On a shared machine someone else's test run can hold the cores for a while, and a measurement
 * started then measures them. Waits, up to `maxSeconds`, for a second in which the machine is
 * near idle; returns what it saw, so a report can say when the wait ran out.
 */
export async function waitForQuiet(maxSeconds: number): Promise<{ waitedSeconds: number; busyCores: number }> {
  const started = performance.now();
  for (;;) {
    const a = machineCpuSeconds();
    await new Promise((r) => setTimeout(r, 1_000));
    const b = machineCpuSeconds();
    const busyCores = (b.busy - a.busy) / ((b.total - a.total) / os.availableParallelism());
    const waitedSeconds = (performance.now() - started) / 1000;
    if (busyCores < QUIET_CORES || waitedSeconds >= maxSeconds) return { waitedSeconds, busyCores };
  }
}

/**
 * Which database the launched mesh uses, for a report: the launcher hands DATABASE_URL (when set
 * in the bench's environment) to every service, else it starts the embedded one. The URL is
 * shown without credentials.
 */
export function databaseDescription(): string {
  const url = process.env.DATABASE_URL;
  if (!url) return "the embedded Postgres (PGlite behind the pg wire protocol)";
  try {
    const u = new URL(url);
    return `PostgreSQL at ${u.hostname}:${u.port || "5432"}${u.pathname} (DATABASE_URL)`;
  } catch {
    return "PostgreSQL (DATABASE_URL)";
  }
}

/** bench/results/<name>.md on the embedded default, <name>-postgres.md on DATABASE_URL, so neither overwrites the other. */
export function resultsFile(root: string, name: string): string {
  return path.join(root, "bench/results", `${name}${process.env.DATABASE_URL ? "-postgres" : ""}.md`);
}
