import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { spawn } from "node:child_process";
import { Kafka, logLevel } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { Supervisor, restartDelay, type Log } from "../deploy/embedded/supervisor.js";
import { paperPdf } from "./fixtures/documents/make-fixtures.js";
import {
  freePort,
  freeMeshPorts,
  isAlive,
  processesWithEnv,
  repoRoot,
  startEmbeddedMesh,
  type EmbeddedMesh,
} from "./support/embedded-mesh.js";

interface Logged {
  level: string;
  msg: string;
  fields: Record<string, unknown>;
}

function recorder(): { log: Log; logged: Logged[] } {
  const logged: Logged[] = [];
  return { logged, log: (level, msg, fields = {}) => void logged.push({ level, msg, fields }) };
}

const crashy = (env: Record<string, string>) => ({
  name: "crashy",
  entry: "test/support/crashy-component.ts",
  env: () => env,
});

describe("restart backoff", () => {
  it("doubles from the initial delay to the cap, jittered down by at most a fifth", () => {
    const policy = { initialDelayMs: 500, maxDelayMs: 30_000, resetAfterMs: 60_000 };
    expect([1, 2, 3, 4, 5, 6, 7, 8, 100].map((n) => restartDelay(n, policy, () => 0))).toEqual([
      500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000,
    ]);
    expect(restartDelay(1, policy, () => 1)).toBe(400);
    expect(restartDelay(9, policy, () => 0.999)).toBeGreaterThanOrEqual(24_000);
  });
});

describe("the supervisor, with a component that misbehaves", () => {
  it("keeps restarting a crash loop at a growing, capped delay, and stops for good on stopAll", async () => {
    const { log, logged } = recorder();
    const supervisor = new Supervisor({
      startupTimeoutMs: 30_000,
      stopBoundMs: 5_000,
      policy: { initialDelayMs: 100, maxDelayMs: 300, resetAfterMs: 60_000 },
      log,
    });
    await supervisor.start(crashy({ CRASHY_MODE: "crash", CRASHY_AFTER_MS: "50" }));
    const crashes = () => logged.filter((l) => l.msg === "component exited unexpectedly; restarting it");
    await expect.poll(() => crashes().length, { timeout: 40_000, interval: 100 }).toBeGreaterThanOrEqual(4);
    const seen = crashes().slice(0, 4);
    expect(seen.map((l) => l.fields.attempt)).toEqual([1, 2, 3, 4]);
    expect(seen.map((l) => l.fields.code)).toEqual([3, 3, 3, 3]);
    const delays = seen.map((l) => l.fields.delay_ms as number);
    expect(delays[0]).toBeGreaterThanOrEqual(80);
    expect(delays[0]).toBeLessThanOrEqual(100);
    expect(delays[2]).toBeGreaterThanOrEqual(240);
    expect(delays[3]).toBeLessThanOrEqual(300);
    // Each try that came up again says so.
    expect(logged.filter((l) => l.msg === "component restarted").length).toBeGreaterThanOrEqual(3);

    await supervisor.stopAll();
    const pid = supervisor.pids().crashy!;
    const after = logged.length;
    await new Promise((r) => setTimeout(r, 1_000));
    expect(logged.slice(after).filter((l) => l.msg.includes("restart"))).toEqual([]);
    expect(isAlive(pid)).toBe(false);
  });

  it("starts the backoff over once a component has stayed up long enough", async () => {
    const { log, logged } = recorder();
    const supervisor = new Supervisor({
      startupTimeoutMs: 30_000,
      stopBoundMs: 5_000,
      policy: { initialDelayMs: 100, maxDelayMs: 1_000, resetAfterMs: 200 },
      log,
    });
    await supervisor.start(crashy({ CRASHY_MODE: "crash", CRASHY_AFTER_MS: "400" }));
    const crashes = () => logged.filter((l) => l.msg === "component exited unexpectedly; restarting it");
    await expect.poll(() => crashes().length, { timeout: 30_000, interval: 100 }).toBeGreaterThanOrEqual(3);
    await supervisor.stopAll();
    expect(crashes().map((l) => l.fields.attempt)).toEqual(crashes().map(() => 1));
  });

  it("does not restart a component that fails before its first ready: the launch fails with its reason", async () => {
    const { log, logged } = recorder();
    const supervisor = new Supervisor({ startupTimeoutMs: 30_000, stopBoundMs: 5_000, log });
    await expect(supervisor.start(crashy({ CRASHY_MODE: "fail-start" }))).rejects.toThrow(
      "crashy failed to start: refusing to start, as asked",
    );
    await new Promise((r) => setTimeout(r, 500));
    expect(logged).toEqual([]);
    await supervisor.stopAll();
  });
});

/** What a launcher logged with this message, as parsed JSON lines. */
function launcherLines(output: string, msg: string): Array<Record<string, unknown>> {
  return output
    .split("\n")
    .filter((l) => l.startsWith("{") && l.includes('"service":"launcher"') && l.includes(`"msg":"${msg}"`))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function meshPorts(): Promise<Record<string, string>> {
  return {
    ...(await freeMeshPorts()),
  };
}

describe("the embedded launcher supervises the mesh", () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-supervision-"));
  let mesh: EmbeddedMesh;
  let gateway: string;
  let auth: { authorization: string };
  let kafka: Kafka;

  const call = async (service: string, method: string, body: unknown, headers: Record<string, string> = {}) => {
    const res = await fetch(`${gateway}/medmesh.${service}/${method}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };
  const documents = (method: string, body: unknown) => call("documents.v1.DocumentService", method, body, auth);

  /** Uploads a paper through the gateway as a browser does: StartUpload, one part, CompleteUpload. */
  async function uploadPaper(title: string): Promise<string> {
    const pdf = paperPdf();
    const started = await documents("StartUpload", {
      header: {
        document: { title, documentType: "DOCUMENT_TYPE_RESEARCH_PAPER" },
        filename: "paper.pdf",
        declaredMimeType: "application/pdf",
      },
      sizeBytes: String(pdf.length),
    });
    expect(started.status, JSON.stringify(started.body)).toBe(200);
    const uploadId = started.body.upload.uploadId as string;
    const part = await documents("UploadPart", { uploadId, offset: "0", data: pdf.toString("base64") });
    expect(part.status, JSON.stringify(part.body)).toBe(200);
    const { createHash } = await import("node:crypto");
    const done = await documents("CompleteUpload", {
      uploadId,
      sha256: createHash("sha256").update(pdf).digest("hex"),
    });
    expect(done.status, JSON.stringify(done.body)).toBe(200);
    return done.body.document.id as string;
  }

  const processingStatus = async (id: string) =>
    (await documents("GetDocument", { id })).body.document?.processingStatus as string | undefined;

  async function messagesIn(topic: string): Promise<number> {
    const admin = kafka.admin();
    await admin.connect();
    try {
      const offsets = await admin.fetchTopicOffsets(topic);
      return offsets.reduce((n, o) => n + Number(o.high) - Number(o.low), 0);
    } finally {
      await admin.disconnect();
    }
  }

  /** Kills a component as the OOM killer would and waits for the launcher to say it is back. */
  async function killAndAwaitRestart(component: string): Promise<Record<string, unknown>> {
    const pid = currentPids()[component]!;
    const before = launcherLines(mesh.output(), "component restarted").length;
    process.kill(pid, "SIGKILL");
    await expect
      .poll(() => launcherLines(mesh.output(), "component restarted").length, { timeout: 60_000, interval: 200 })
      .toBeGreaterThan(before);
    const crash = launcherLines(mesh.output(), "component exited unexpectedly; restarting it").at(-1)!;
    expect(crash).toMatchObject({ level: "error", component, pid, signal: "SIGKILL", code: null, attempt: 1 });
    expect(crash.delay_ms).toBeGreaterThan(0);
    expect(crash.delay_ms).toBeLessThanOrEqual(500);
    const back = launcherLines(mesh.output(), "component restarted").at(-1)!;
    expect(back).toMatchObject({ component, attempt: 1 });
    expect(back.pid).not.toBe(pid);
    console.log(`${component} killed; launcher logged:\n${JSON.stringify(crash)}\n${JSON.stringify(back)}`);
    return back;
  }

  /** Each component's current pid: the ready line's, as replaced by every restart since. */
  function currentPids(): Record<string, number> {
    const pids = { ...(launcherLines(mesh.output(), "mesh ready")[0]!.pids as Record<string, number>) };
    for (const r of launcherLines(mesh.output(), "component restarted")) pids[r.component as string] = r.pid as number;
    return pids;
  }

  beforeAll(async () => {
    delete process.env.DATABASE_URL;
    mesh = await startEmbeddedMesh(
      {
        ...(await meshPorts()),
        MEDMESH_DATA_DIR: dataDir,
        DATABASE_URL: "",
        KAFKA_BROKERS: "",
        REDIS_URL: "",
        LOG_LEVEL: "info",
      },
      120_000,
      { ownProcessGroup: true },
    );
    gateway = mesh.endpoints.get("gateway")!;
    kafka = new Kafka({ brokers: [mesh.endpoints.get("kafka")!], logLevel: logLevel.NOTHING });
    const identity = (method: string, body: unknown) => call("identity.v1.IdentityService", method, body);
    expect(
      (
        await identity("Register", {
          email: "admin@medmesh.local",
          username: "admin",
          password: "an admin password",
          firstName: "Ad",
          lastName: "Min",
        })
      ).status,
    ).toBe(200);
    const login = await identity("Login", { login: "admin", password: "an admin password" });
    expect(login.body.tokens, `Login answered ${login.status}: ${JSON.stringify(login.body)}`).toBeDefined();
    auth = { authorization: `Bearer ${login.body.tokens.accessToken}` };
  });

  afterAll(async () => {
    if (mesh?.child.exitCode === null) await mesh.stop();
    for (const pid of processesWithEnv(dataDir)) process.kill(pid, "SIGKILL");
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("restarts documents after a SIGKILL, with the others untouched and its data intact", async () => {
    const created = await documents("CreateDocument", {
      document: { title: "Survives a crash", documentType: "DOCUMENT_TYPE_CASE_REPORT", doi: "10.5555/crash-1" },
    });
    expect(created.status).toBe(200);
    const id = created.body.document.id as string;
    const others = currentPids();

    await killAndAwaitRestart("documents");
    // Nobody else was restarted: dependents reconnect by themselves.
    for (const name of ["postgres", "kafka", "identity", "processing", "gateway"])
      expect(currentPids()[name], name).toBe(others[name]);
    expect(mesh.child.exitCode).toBeNull();

    const health = createMeshClient(Health, mesh.endpoints.get("documents")!.replace("grpc://", ""));
    const status = await health.check({ service: "medmesh.documents.v1.DocumentService" }, { timeoutMs: 5_000 });
    expect(status.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    health.close();
    // Through the gateway, whose channel to documents reconnects on its own.
    await expect
      .poll(
        async () =>
          (await documents("GetDocument", { id }).catch(() => ({ status: 0, body: {} as Record<string, any> }))).body
            .document?.doi,
        {
          timeout: 30_000,
          interval: 250,
        },
      )
      .toBe("10.5555/crash-1");
    await expect.poll(async () => (await fetch(`${gateway}/readyz`)).status, { timeout: 15_000 }).toBe(200);
  });

  it("restarts the broker after a SIGKILL: its topics are intact and the pipeline carries on", async () => {
    const first = await uploadPaper("Before the broker crash");
    await expect
      .poll(() => processingStatus(first), { timeout: 60_000, interval: 250 })
      // Search runs in the mesh too: a processed version goes on to INDEXED.
      .toMatch(/^PROCESSING_STATUS_(PROCESSED|INDEXED)$/);
    // Uploaded, then processed: the worker's own outbox publishes the second a moment later.
    await expect
      .poll(() => messagesIn("document.events"), { timeout: 30_000, interval: 250 })
      .toBeGreaterThanOrEqual(2);
    const published = await messagesIn("document.events");

    await killAndAwaitRestart("kafka");
    expect(mesh.child.exitCode).toBeNull();
    expect(await messagesIn("document.events")).toBeGreaterThanOrEqual(published);

    // The relay and the worker's consumer find the broker again by themselves.
    const second = await uploadPaper("After the broker crash");
    await expect
      .poll(() => processingStatus(second), { timeout: 90_000, interval: 250 })
      // Search runs in the mesh too: a processed version goes on to INDEXED.
      .toMatch(/^PROCESSING_STATUS_(PROCESSED|INDEXED)$/);
    await expect
      .poll(() => messagesIn("document.events"), { timeout: 30_000, interval: 250 })
      .toBeGreaterThanOrEqual(published + 2);
  });

  it("stops everything on SIGINT to the process group, in reverse order, quietly", async () => {
    const pids = currentPids();
    expect(Object.keys(pids).sort()).toEqual([
      "devices",
      "documents",
      "gateway",
      "identity",
      "kafka",
      "notifications",
      "postgres",
      "processing",
      "search",
      "smtp",
    ]);
    const from = mesh.output().length;
    const stopping = Date.now();
    const exited = new Promise<number | null>((resolve) => mesh.child.once("exit", (code) => resolve(code)));
    // What a terminal's Ctrl-C does: the signal goes to every process in the foreground group.
    process.kill(-mesh.child.pid!, "SIGINT");
    expect(await exited).toBe(0);
    const took = Date.now() - stopping;
    console.log(`stopped on SIGINT to the group in ${took} ms`);
    expect(took).toBeLessThan(30_000);
    for (const [name, pid] of Object.entries(pids)) expect(isAlive(pid), `${name} still running`).toBe(false);
    expect(processesWithEnv(dataDir)).toEqual([]);

    const stopLog = mesh.output().slice(from);
    expect(stopLog).not.toContain("ECONNREFUSED");
    expect(stopLog).not.toMatch(/unhandled/i);
    expect(stopLog).not.toMatch(/\n\s+at |"stack"/);
    expect(stopLog).not.toContain("restarting");
    const order = stopLog
      .split("\n")
      .filter((l) => l.includes('"msg":"stopping"') && !l.includes('"service":"launcher"'))
      .map((l) => JSON.parse(l).service as string);
    expect(order).toEqual([
      "gateway",
      "notifications",
      "devices",
      "search",
      "processing",
      "documents",
      "identity",
      "smtp",
      "kafka",
      "postgres",
    ]);
  });
});

describe("a taken port", () => {
  it("fails the launch at once with the variable to change, leaving no process behind", async () => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-ports-"));
    const ports = await meshPorts();
    const squatters = await Promise.all(
      [ports.GATEWAY_PORT!, ports.DOCUMENTS_PORT!].map(
        (port) =>
          new Promise<net.Server>((resolve) => {
            const s = net.createServer();
            s.listen(Number(port), "127.0.0.1", () => resolve(s));
          }),
      ),
    );
    try {
      const started = Date.now();
      const child = spawn(process.execPath, ["--import", "tsx", "deploy/embedded/launch.ts"], {
        cwd: repoRoot,
        env: {
          ...process.env,
          ...ports,
          MEDMESH_DATA_DIR: dataDir,
          DATABASE_URL: "",
          KAFKA_BROKERS: "",
          REDIS_URL: "",
        },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let stderr = "";
      child.stderr.on("data", (d) => (stderr += d));
      const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
      const took = Date.now() - started;
      console.log(`taken ports refused in ${took} ms:\n${stderr}`);
      expect(code).not.toBe(0);
      expect(took).toBeLessThan(15_000);
      expect(stderr).toContain(`gateway: port ${ports.GATEWAY_PORT} is taken (set GATEWAY_PORT to another port)`);
      expect(stderr).toContain(`documents: port ${ports.DOCUMENTS_PORT} is taken (set DOCUMENTS_PORT to another port)`);
      expect(stderr).not.toMatch(/\n\s+at /);
      expect(processesWithEnv(dataDir)).toEqual([]);
    } finally {
      for (const s of squatters) s.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
