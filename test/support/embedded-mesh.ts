import { spawn, type ChildProcess } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
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
export async function startEmbeddedMesh(env: Record<string, string>, timeoutMs = 120_000): Promise<EmbeddedMesh> {
  const started = Date.now();
  const child = spawn(process.execPath, ["--import", "tsx", "deploy/embedded/launch.ts"], {
    cwd: repoRoot,
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
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
