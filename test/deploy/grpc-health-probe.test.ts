import { execFile } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExitCode } from "../../deploy/compose/grpc-health-probe.js";
import { ServingStatus } from "../../platform/grpc/health.js";
import { startGrpcServer, type RunningGrpcServer } from "../../platform/grpc/server.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const probeScript = path.join(root, "deploy/compose/grpc-health-probe.ts");

interface Run {
  code: number;
  output: string;
  elapsedMs: number;
}

/** Runs the probe exactly as a container healthcheck would: a fresh node process. */
function runProbe(args: string[]): Promise<Run> {
  const started = performance.now();
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ["--import", "tsx", probeScript, ...args],
      { cwd: root, timeout: 20_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
        resolve({ code, output: stdout + stderr, elapsedMs: performance.now() - started });
      },
    );
  });
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

describe("grpc-health-probe", () => {
  let server: RunningGrpcServer;
  let silent: net.Server;
  const silentSockets = new Set<net.Socket>();

  beforeAll(async () => {
    server = await startGrpcServer({
      name: "probe-test",
      host: "127.0.0.1",
      port: 0,
      services: [],
      interceptors: [],
      maxMessageBytes: 1024 * 1024,
    });
    // Accepts TCP and never speaks HTTP/2: the case where only the deadline can end the probe.
    silent = net.createServer((socket) => silentSockets.add(socket));
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
  });

  afterAll(async () => {
    await server?.shutdown(1_000);
    for (const s of silentSockets) s.destroy();
    await new Promise<void>((r) => silent?.close(() => r()));
  });

  it("exits 0 while the server is SERVING", async () => {
    server.health.setAll(ServingStatus.SERVING);
    const run = await runProbe([`127.0.0.1:${server.port}`]);
    expect(run.output).toContain("SERVING");
    expect(run.code).toBe(ExitCode.serving);
  });

  it("exits non-zero while the server is NOT_SERVING, and 0 again once it recovers", async () => {
    server.health.setAll(ServingStatus.NOT_SERVING);
    const down = await runProbe([`127.0.0.1:${server.port}`]);
    expect(down.code).toBe(ExitCode.notServing);
    expect(down.output).toContain("NOT_SERVING");

    server.health.setAll(ServingStatus.SERVING);
    const up = await runProbe([`dns:///localhost:${server.port}`]);
    expect(up.code).toBe(ExitCode.serving);
  });

  it("treats a service name the server does not know as not serving", async () => {
    server.health.setAll(ServingStatus.SERVING);
    const run = await runProbe([`127.0.0.1:${server.port}`, "--service=medmesh.nothing.v1.Missing"]);
    expect(run.code).toBe(ExitCode.notServing);
  });

  it("exits non-zero quickly for a closed port", async () => {
    const run = await runProbe([`127.0.0.1:${await freePort()}`, "--timeout-ms=3000"]);
    expect(run.code).toBe(ExitCode.unreachable);
    // Refused connections must not wait for the deadline; the margin covers node + tsx start-up.
    expect(run.elapsedMs).toBeLessThan(8_000);
  });

  it("gives up at its deadline when the peer accepts but never answers", async () => {
    const { port } = silent.address() as net.AddressInfo;
    const run = await runProbe([`127.0.0.1:${port}`, "--timeout-ms=700"]);
    expect(run.code).toBe(ExitCode.unreachable);
    expect(run.elapsedMs).toBeLessThan(8_000);
  });

  it("rejects a missing address with a usage error", async () => {
    const run = await runProbe([]);
    expect(run.code).toBe(ExitCode.usage);
    expect(run.output).toContain("usage");
  });
});
