import { fork, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { ConfigError, env, loadConfig } from "../../platform/config/env.js";
import { components as declared, hostField, loopbackAddress, portField } from "../../platform/config/components.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

const configSpec = {
  MEDMESH_DATA_DIR: env.string("where embedded data lives", ".data"),
  DATABASE_URL: env.url("use this Postgres instead of the embedded one", ["postgres:", "postgresql:"]),
  ...portField(declared.postgres, "port of the embedded Postgres"),
  ...hostField(declared.gateway, "interface the gateway binds"),
  ...portField(declared.gateway, "gateway port"),
  ...portField(declared.documents, "documents gRPC port"),
  ...portField(declared.identity, "identity gRPC port"),
  ...portField(declared.processing, "processing worker's health port"),
  PROCESSING_API_KEY: env.optionalString(
    "the processing worker's API key; unset means one generated on first start and kept in the data dir",
  ),
  MESH_EDGE_SECRET: env.optionalString(
    "the secret the gateway signs client addresses with; unset means one generated on first start and kept in the data dir",
  ),
  IDENTITY_BOOTSTRAP_ADMIN_EMAIL: env.string(
    "the account registered with this address becomes the first admin",
    "admin@medmesh.local",
  ),
  KAFKA_BROKERS: env.optionalString("use these Kafka brokers instead of the embedded one"),
  ...portField(declared.kafka, "port of the embedded Kafka-compatible broker"),
  STARTUP_TIMEOUT_MS: env.int("how long a component may take to become ready", 120_000, 1_000, 600_000),
};

interface Component {
  name: string;
  entry: string;
  env: () => Record<string, string>;
}

interface Running {
  name: string;
  child: ChildProcess;
  endpoints: Record<string, string>;
}

function log(msg: string, fields: Record<string, unknown> = {}) {
  process.stderr.write(
    JSON.stringify({ time: new Date().toISOString(), level: "info", service: "launcher", msg, ...fields }) + "\n",
  );
}

/** Forks one component and resolves with its endpoints once it reports ready over IPC. */
function startComponent(c: Component, timeoutMs: number): Promise<Running> {
  const child = fork(path.join(root, c.entry), [], {
    cwd: process.cwd(),
    execArgv: ["--import", "tsx"],
    env: { ...process.env, ...c.env() },
    // Component logs (JSON lines) go to stderr so stdout carries only the endpoint lines.
    stdio: ["ignore", "pipe", "inherit", "ipc"],
  });
  child.stdout!.pipe(process.stderr);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${c.name} did not become ready within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on("message", (m: { type?: string; endpoints?: Record<string, string> }) => {
      if (m?.type !== "ready") return;
      clearTimeout(timer);
      resolve({ name: c.name, child, endpoints: m.endpoints ?? {} });
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${c.name} exited before it was ready (${signal ?? `code ${code}`})`));
    });
  });
}

async function stopComponent(r: Running, boundMs: number): Promise<void> {
  if (r.child.exitCode !== null || r.child.signalCode !== null) return;
  const exited = new Promise<void>((res) => r.child.once("exit", () => res()));
  r.child.kill("SIGTERM");
  const timer = setTimeout(() => r.child.kill("SIGKILL"), boundMs);
  await exited;
  clearTimeout(timer);
}

/**
 * A secret the launcher hands to its children: the one configured, else the one made on first
 * start and kept beside the data (owner-only file, under secrets/), else a fresh one.
 * - processing-api-key: the worker's API key. Identity is told to make sure it exists, so the
 *   worker can trade it for tokens from the start without anyone creating it by hand.
 * - mesh-edge-secret: what the gateway signs client addresses with and identity verifies them
 *   with (platform/auth/client-address.ts).
 */
function keptSecret(name: string, configured: string | undefined, dataDir: string, fresh: () => string): string {
  if (configured) return configured;
  // In-memory data forgets identity's copy of the key too; a secret per run matches that.
  if (dataDir === "memory://") return fresh();
  const file = path.resolve(dataDir, "secrets", name);
  try {
    const kept = readFileSync(file, "utf8").trim();
    if (kept) return kept;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  const key = fresh();
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  writeFileSync(file, `${key}\n`, { mode: 0o600, flag: "wx" });
  return key;
}

async function main() {
  let config: ReturnType<typeof loadConfig<typeof configSpec>>;
  try {
    config = loadConfig(configSpec);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`medmesh: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const started = performance.now();
  const running: Running[] = [];
  let stopping = false;

  const stopAll = async (code: number) => {
    if (stopping) return;
    stopping = true;
    // Reverse start order: the edge stops taking traffic first, storage goes last.
    for (const r of [...running].reverse()) await stopComponent(r, 15_000);
    log("stopped");
    process.exit(code);
  };
  process.on("SIGINT", () => void stopAll(0));
  process.on("SIGTERM", () => void stopAll(0));
  // If whatever started us (a shell, npm) dies without passing its signal on, we would keep the
  // mesh running as orphans; noticing the new parent stops everything instead.
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) void stopAll(0);
  }, 1_000).unref();

  let apiKey: string;
  let edgeSecret: string;
  try {
    const random = () => randomBytes(32).toString("base64url");
    apiKey = keptSecret(
      "processing-api-key",
      config.PROCESSING_API_KEY,
      config.MEDMESH_DATA_DIR,
      () => `mmk_${random()}`,
    );
    edgeSecret = keptSecret("mesh-edge-secret", config.MESH_EDGE_SECRET, config.MEDMESH_DATA_DIR, random);
  } catch (err) {
    process.stderr.write(
      `medmesh: cannot keep the mesh's secrets under ${config.MEDMESH_DATA_DIR}: ${(err as Error).message}\n`,
    );
    process.exit(2);
  }
  // Keys someone configured for other services stay; the worker's is added to them.
  const bootstrapKeys = [process.env.IDENTITY_BOOTSTRAP_API_KEYS, `processing=${apiKey}`].filter(Boolean).join(",");

  let databaseUrl = config.DATABASE_URL;
  let kafkaBrokers = config.KAFKA_BROKERS;
  // Every child listens on loopback; the callers are told the ports this run uses.
  const { documents, identity, gateway, processing, postgres, kafka } = declared;
  const documentsTarget = loopbackAddress(config.DOCUMENTS_PORT);
  const identityTarget = loopbackAddress(config.IDENTITY_PORT);
  const components: Component[] = [];
  if (!databaseUrl) {
    components.push({
      name: postgres.name,
      entry: "deploy/embedded/postgres.ts",
      env: () => ({ [postgres.portVariable]: String(config.EMBEDDED_PG_PORT) }),
    });
  }
  if (!config.KAFKA_BROKERS) {
    components.push({
      name: kafka.name,
      entry: "deploy/embedded/kafka-component.ts",
      env: () => ({ [kafka.portVariable]: String(config.KAFKA_PORT) }),
    });
  }
  components.push(
    {
      name: identity.name,
      entry: "services/identity/main.ts",
      env: () => ({
        DATABASE_URL: databaseUrl!,
        [identity.portVariable]: String(config.IDENTITY_PORT),
        IDENTITY_BOOTSTRAP_ADMIN_EMAIL: config.IDENTITY_BOOTSTRAP_ADMIN_EMAIL,
        IDENTITY_BOOTSTRAP_API_KEYS: bootstrapKeys,
        MESH_EDGE_SECRET: edgeSecret,
      }),
    },
    {
      name: documents.name,
      entry: "services/documents/main.ts",
      env: () => ({
        DATABASE_URL: databaseUrl!,
        [documents.portVariable]: String(config.DOCUMENTS_PORT),
        [identity.targetVariable]: identityTarget,
        KAFKA_BROKERS: kafkaBrokers!,
      }),
    },
    {
      name: processing.name,
      entry: "services/processing/main.ts",
      env: () => ({
        DATABASE_URL: databaseUrl!,
        [processing.portVariable]: String(config.PROCESSING_PORT),
        KAFKA_BROKERS: kafkaBrokers!,
        [documents.targetVariable]: documentsTarget,
        [identity.targetVariable]: identityTarget,
        PROCESSING_API_KEY: apiKey,
      }),
    },
    {
      name: gateway.name,
      entry: "gateway/main.ts",
      env: () => ({
        [documents.targetVariable]: documentsTarget,
        [identity.targetVariable]: identityTarget,
        [gateway.portVariable]: String(config.GATEWAY_PORT),
        [gateway.hostVariable]: config.GATEWAY_HOST,
        MESH_EDGE_SECRET: edgeSecret,
      }),
    },
  );

  try {
    // Storage and the broker depend on nothing and start together, then the services (which
    // need only storage), then what calls the services: the gateway in front of them and the
    // processing worker behind them.
    const infrastructure = new Set<string>([postgres.name, kafka.name]);
    const callers = new Set<string>([gateway.name, processing.name]);
    const stages = [
      components.filter((c) => infrastructure.has(c.name)),
      components.filter((c) => !infrastructure.has(c.name) && !callers.has(c.name)),
      components.filter((c) => callers.has(c.name)),
    ].filter((stage) => stage.length > 0);
    for (const stage of stages) {
      const results = await Promise.allSettled(stage.map((c) => startComponent(c, config.STARTUP_TIMEOUT_MS)));
      for (const [i, result] of results.entries()) {
        if (result.status === "rejected") throw result.reason;
        const r = result.value;
        const c = stage[i]!;
        running.push(r);
        if (c.name === postgres.name) databaseUrl = r.endpoints.postgres;
        if (c.name === kafka.name) kafkaBrokers = r.endpoints.kafka;
        // A component that dies later takes the mesh down with it, loudly, rather than leaving
        // a half-working mesh behind.
        r.child.once("exit", (code, signal) => {
          if (stopping) return;
          log("component exited unexpectedly; stopping the mesh", { component: c.name, code, signal });
          void stopAll(1);
        });
      }
    }
  } catch (err) {
    log("start failed", { error: (err as Error).message });
    await stopAll(1);
    return;
  }

  const lines: Array<[string, string]> = [];
  const edge = running.find((r) => r.name === gateway.name)!;
  lines.push([gateway.name, edge.endpoints.gateway!]);
  for (const r of running) {
    for (const [k, v] of Object.entries(r.endpoints)) if (k !== "gateway") lines.push([k, v]);
  }
  for (const [k, v] of lines) process.stdout.write(`${k} ${v}\n`);
  log("mesh ready", {
    ready_ms: Math.round(performance.now() - started),
    data_dir: path.resolve(config.MEDMESH_DATA_DIR),
    pids: Object.fromEntries(running.map((r) => [r.name, r.child.pid])),
  });
}

void main();
