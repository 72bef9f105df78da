import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { components } from "../../platform/config/components.js";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/**
 * A free port for every component the launcher may start, keyed by the variable that moves it: a
 * mesh booted by a test never takes a default port that a developer's mesh (or another test) holds,
 * and a component added to components.ts is covered without touching the tests.
 */
export async function freeMeshPorts(): Promise<Record<string, string>> {
  const ports: Record<string, string> = {};
  for (const c of Object.values(components)) ports[c.portVariable] = String(await freePort());
  return ports;
}

export interface EmbeddedMesh {
  child: ChildProcess;
  endpoints: Map<string, string>;
  /** Endpoint names in the order they were printed. */
  order: string[];
  readyMs: number;
  output: () => string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * Boots the mesh exactly as `npm start` does (the same launcher, child processes, ports and
 * data dir chosen by the test) and resolves once it has printed its endpoints.
 */
export async function startEmbeddedMesh(
  env: Record<string, string>,
  timeoutMs = 120_000,
  // In a process group of its own, a test can signal the group as a terminal's Ctrl-C does.
  { ownProcessGroup = false }: { ownProcessGroup?: boolean } = {},
): Promise<EmbeddedMesh> {
  const started = Date.now();
  const child = spawn(process.execPath, ["--import", "tsx", "deploy/embedded/launch.ts"], {
    cwd: repoRoot,
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
    detached: ownProcessGroup,
  });
  let stdout = "";
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += d));
  const endpoints = new Map<string, string>();
  const order: string[] = [];
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`mesh not ready in ${timeoutMs} ms:\n${stderr}`)), timeoutMs);
    child.stdout!.on("data", (d: Buffer) => {
      stdout += d;
      for (const line of stdout.split("\n").slice(0, -1)) {
        const [name, url] = line.split(" ");
        if (name && url && !endpoints.has(name)) {
          endpoints.set(name, url);
          order.push(name);
        }
      }
      if (endpoints.has("gateway") && endpoints.has("documents")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`launcher exited with ${code} before ready:\n${stderr}`));
    });
  });
  return {
    child,
    endpoints,
    order,
    readyMs: Date.now() - started,
    output: () => stdout + stderr,
    stop(signal = "SIGTERM") {
      if (child.exitCode !== null) return Promise.resolve(child.exitCode);
      return new Promise((resolve) => {
        child.once("exit", (code) => resolve(code));
        child.kill(signal);
      });
    },
  };
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Processes (of this user) whose environment holds `marker`, such as a test's unique data dir:
 * every component of a launcher inherits its environment, so this finds them whoever their
 * parent is now.
 */
export function processesWithEnv(marker: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/environ`).includes(marker)) found.push(Number(entry));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return found;
}
