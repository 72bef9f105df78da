import { fork, type ChildProcess } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { portTakenMessage, type Listens } from "./ports.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** One process of the embedded mesh, as the launcher knows it. */
export interface ComponentSpec {
  name: string;
  /** Its entry point, relative to the repository root. */
  entry: string;
  /** Read at every (re)start, so a restart sees addresses learnt since the first one. */
  env: () => Record<string, string>;
  /** The port it binds, checked before launch and named when it turns out to be taken. */
  listens?: Listens;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ComponentProcess {
  child: ChildProcess;
  /** Its endpoints once it reports ready; rejects with a sentence if it exits or hangs first. */
  ready: Promise<Record<string, string>>;
  /** Settles once the process is gone, however it went. */
  exited: Promise<Exit>;
  /** Why it failed before becoming ready, when it said so (or timed out). */
  failure(): string | undefined;
}

interface ChildMessage {
  type?: string;
  endpoints?: Record<string, string>;
  error?: string;
  code?: string;
}

/** Forks one component; its readiness and its failure both arrive over IPC (platform/lifecycle/run-main.ts). */
export function forkComponent(spec: ComponentSpec, startupTimeoutMs: number): ComponentProcess {
  const child = fork(path.join(root, spec.entry), [], {
    cwd: process.cwd(),
    // A launcher run with --cpu-prof (bench/pipeline.ts's BENCH_CPU_PROF_DIR) profiles its components too.
    execArgv: [...process.execArgv.filter((a) => a.startsWith("--cpu-prof")), "--import", "tsx"],
    env: { ...process.env, ...spec.env() },
    // Component logs (JSON lines, written to their stdout) go straight to our stderr, so stdout
    // carries only the endpoint lines. Not piped through us: a component that outlives the
    // launcher (killed with SIGKILL) must still be able to log its own stop, not die of EPIPE.
    stdio: ["ignore", process.stderr, "inherit", "ipc"],
    // A process group of its own: a terminal's Ctrl-C reaches the whole foreground group at once,
    // which would stop storage while the services still use it. Only the launcher gets it, and
    // stops the components in order; if the launcher dies, each notices the IPC channel close.
    detached: true,
  });
  let failure: string | undefined;
  const exited = new Promise<Exit>((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  // A fork that cannot even start (EAGAIN, ENOMEM) emits 'error' and then 'exit'.
  child.on("error", (err) => (failure ??= err.message));
  const ready = new Promise<Record<string, string>>((resolve, reject) => {
    const timer = setTimeout(() => {
      failure = `${spec.name} did not become ready within ${startupTimeoutMs} ms`;
      child.kill("SIGKILL");
    }, startupTimeoutMs);
    child.on("message", (m: ChildMessage) => {
      if (m?.type === "failed") {
        failure =
          m.code === "EADDRINUSE" && spec.listens
            ? portTakenMessage(spec.name, spec.listens)
            : `${spec.name} failed to start: ${m.error}`;
      }
      if (m?.type !== "ready") return;
      clearTimeout(timer);
      resolve(m.endpoints ?? {});
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      // After 'ready' this rejection is ignored: a promise settles once.
      reject(new Error(failure ?? `${spec.name} exited before it was ready (${signal ?? `code ${code}`})`));
    });
  });
  // Whoever awaits `ready` handles the rejection; this keeps an unwatched one from being "unhandled".
  ready.catch(() => undefined);
  return { child, ready, exited, failure: () => failure };
}

export function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** SIGTERM, then SIGKILL if it is still there after `boundMs`; resolves once it is gone. */
export async function stopComponent(p: ComponentProcess, boundMs: number): Promise<void> {
  if (hasExited(p.child)) return;
  p.child.kill("SIGTERM");
  const timer = setTimeout(() => p.child.kill("SIGKILL"), boundMs);
  await p.exited;
  clearTimeout(timer);
}
