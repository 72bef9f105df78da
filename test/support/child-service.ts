import { spawn, type ChildProcess } from "node:child_process";
import { repoRoot } from "./embedded-mesh.js";

export interface ChildService {
  child: ChildProcess;
  /** `name url` lines the process printed once ready (runMain prints one per endpoint). */
  endpoints: Record<string, string>;
  /** Its exit code (or signal) once it has exited; undefined while it runs. */
  exited(): string | undefined;
  /** Everything it wrote to stderr: the stack of a crash, if there was one. */
  stderr(): string;
  /** Its log lines (stdout) and stderr, for a failing assertion's message. */
  output(): string;
  stop(): Promise<void>;
}

/**
 * Runs one entry point (a service's main.ts, test/support/meshtest-main.ts) as its own process,
 * so a test can tell "answered with an error" from "the process died": an in-process server
 * that crashed would take the test runner down with it, or hide behind vitest's own handlers.
 */
export async function spawnService(
  entry: string,
  env: Record<string, string>,
  expect: string[],
  timeoutMs = 60_000,
): Promise<ChildService> {
  const child = spawn(process.execPath, ["--import", "tsx", entry], {
    cwd: repoRoot,
    env: { ...process.env, LOG_LEVEL: "error", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  let exit: string | undefined;
  child.stderr!.on("data", (d) => (stderr += d));
  child.on("exit", (code, signal) => (exit = `exit ${code ?? signal}`));
  const endpoints: Record<string, string> = {};
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${entry} not ready in ${timeoutMs} ms:\n${stderr}`)), timeoutMs);
    child.stdout!.on("data", (d: Buffer) => {
      stdout += d;
      for (const line of stdout.split("\n").slice(0, -1)) {
        const [name, url] = line.split(" ");
        if (name && url) endpoints[name] = url;
      }
      if (expect.every((n) => endpoints[n])) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      // Components log JSON lines on stdout: the reason a start failed is usually there.
      reject(new Error(`${entry} exited with ${code} before it was ready:\n${stderr}${stdout.slice(-4000)}`));
    });
  });
  return {
    child,
    endpoints,
    exited: () => exit,
    stderr: () => stderr,
    output: () => stdout + stderr,
    async stop() {
      if (exit !== undefined) return;
      const gone = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      const bound = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await gone;
      clearTimeout(bound);
    },
  };
}

/** host:port of a `grpc://host:port` endpoint line. */
export function grpcTarget(url: string): string {
  return url.replace(/^grpc:\/\//, "");
}
