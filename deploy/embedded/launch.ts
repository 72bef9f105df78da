import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { ConfigError, env, loadConfig } from "../../platform/config/env.js";
import {
  components as declared,
  DEFAULT_HOST,
  hostField,
  loopbackAddress,
  portField,
  type Component,
} from "../../platform/config/components.js";
import type { ComponentSpec } from "./component-process.js";
import { unavailablePorts } from "./ports.js";
import { Supervisor } from "./supervisor.js";

const configSpec = {
  MEDMESH_DATA_DIR: env.string("where embedded data lives", ".data"),
  DATABASE_URL: env.url("use this Postgres instead of the embedded one", ["postgres:", "postgresql:"]),
  ...portField(declared.postgres, "port of the embedded Postgres"),
  ...hostField(declared.gateway, "interface the gateway binds"),
  ...portField(declared.gateway, "gateway port"),
  ...portField(declared.documents, "documents gRPC port"),
  ...portField(declared.identity, "identity gRPC port"),
  ...portField(declared.processing, "processing worker's health port"),
  ...portField(declared.search, "search gRPC port"),
  ...portField(declared.devices, "devices gRPC port"),
  ...portField(declared.notifications, "notifications gRPC port"),
  ...portField(declared.smtp, "port of the embedded SMTP sink"),
  SMTP_URL: env.optionalString("send mail through this SMTP server instead of the embedded sink"),
  NOTIFICATIONS_API_KEY: env.optionalString(
    "the notifications service's API key; unset means one generated on first start and kept in the data dir",
  ),
  SEARCH_API_KEY: env.optionalString(
    "the search service's API key; unset means one generated on first start and kept in the data dir",
  ),
  DEVICES_API_KEY: env.optionalString(
    "the devices service's API key; unset means one generated on first start and kept in the data dir",
  ),
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

function log(level: "info" | "warn" | "error", msg: string, fields: Record<string, unknown> = {}) {
  process.stderr.write(
    JSON.stringify({ time: new Date().toISOString(), level, service: "launcher", msg, ...fields }) + "\n",
  );
}

/**
 * Where a component will bind, read as the component reads it (each gets the launcher's
 * environment), so the launcher probes its port where the component will bind it.
 */
function listensOn(c: Component, port: number, host = process.env[c.hostVariable] || DEFAULT_HOST) {
  return { variable: c.portVariable, host, port };
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
  const supervisor = new Supervisor({ startupTimeoutMs: config.STARTUP_TIMEOUT_MS, stopBoundMs: 15_000, log });
  let stopping = false;

  const stopAll = async (code: number, reason: string) => {
    if (stopping) return;
    stopping = true;
    log("info", "stopping", { reason });
    const stoppingAt = performance.now();
    // Reverse start order: the edge stops taking traffic first, storage goes last, so no component
    // outlives what it depends on.
    await supervisor.stopAll();
    log("info", "stopped", { stop_ms: Math.round(performance.now() - stoppingAt) });
    process.exit(code);
  };
  let firstSignalAt = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    if (!stopping) {
      firstSignalAt = performance.now();
      return void stopAll(0, signal);
    }
    // Under `npm start` one Ctrl-C arrives twice: from the terminal to the whole group, and
    // forwarded by npm. Only a signal well after the first is the operator asking again.
    if (performance.now() - firstSignalAt < 1_000) return;
    // Asked again while stopping: the operator does not want to wait for the bounds.
    log("warn", "stopping now", { reason: signal });
    supervisor.killAll();
    process.exit(1);
  };
  // SIGHUP: the terminal went away; the components are in process groups of their own and would
  // not hear of it.
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(signal, onSignal);
  // If whatever started us (a shell, npm) dies without passing its signal on, we would keep the
  // mesh running as orphans; noticing the new parent stops everything instead.
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) void stopAll(0, "parent went away");
  }, 1_000).unref();

  let apiKey: string;
  let searchKey: string;
  let devicesKey: string;
  let notificationsKey: string;
  let edgeSecret: string;
  try {
    const random = () => randomBytes(32).toString("base64url");
    apiKey = keptSecret(
      "processing-api-key",
      config.PROCESSING_API_KEY,
      config.MEDMESH_DATA_DIR,
      () => `mmk_${random()}`,
    );
    searchKey = keptSecret("search-api-key", config.SEARCH_API_KEY, config.MEDMESH_DATA_DIR, () => `mmk_${random()}`);
    devicesKey = keptSecret(
      "devices-api-key",
      config.DEVICES_API_KEY,
      config.MEDMESH_DATA_DIR,
      () => `mmk_${random()}`,
    );
    notificationsKey = keptSecret(
      "notifications-api-key",
      config.NOTIFICATIONS_API_KEY,
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
  const bootstrapKeys = [
    process.env.IDENTITY_BOOTSTRAP_API_KEYS,
    `processing=${apiKey}`,
    `search=${searchKey}`,
    `devices=${devicesKey}`,
    `notifications=${notificationsKey}`,
  ]
    .filter(Boolean)
    .join(",");

  let databaseUrl = config.DATABASE_URL;
  let kafkaBrokers = config.KAFKA_BROKERS;
  // Every child listens on loopback; the callers are told the ports this run uses.
  const { documents, identity, gateway, processing, search, devices, notifications, smtp, postgres, kafka } = declared;
  const documentsTarget = loopbackAddress(config.DOCUMENTS_PORT);
  const identityTarget = loopbackAddress(config.IDENTITY_PORT);
  const searchTarget = loopbackAddress(config.SEARCH_PORT);
  const devicesTarget = loopbackAddress(config.DEVICES_PORT);
  const notificationsTarget = loopbackAddress(config.NOTIFICATIONS_PORT);
  const smtpUrl = config.SMTP_URL ?? `smtp://${loopbackAddress(config.SMTP_SINK_PORT)}`;
  const components: ComponentSpec[] = [];
  if (!databaseUrl) {
    components.push({
      name: postgres.name,
      entry: "deploy/embedded/postgres.ts",
      listens: listensOn(postgres, config.EMBEDDED_PG_PORT),
      env: () => ({ [postgres.portVariable]: String(config.EMBEDDED_PG_PORT) }),
    });
  }
  if (!config.KAFKA_BROKERS) {
    components.push({
      name: kafka.name,
      entry: "deploy/embedded/kafka-component.ts",
      listens: listensOn(kafka, config.KAFKA_PORT),
      env: () => ({ [kafka.portVariable]: String(config.KAFKA_PORT) }),
    });
  }
  if (!config.SMTP_URL) {
    components.push({
      name: smtp.name,
      entry: "deploy/embedded/smtp-sink.ts",
      listens: listensOn(smtp, config.SMTP_SINK_PORT),
      env: () => ({ [smtp.portVariable]: String(config.SMTP_SINK_PORT) }),
    });
  }
  components.push(
    {
      name: identity.name,
      entry: "services/identity/main.ts",
      listens: listensOn(identity, config.IDENTITY_PORT),
      env: () => ({
        DATABASE_URL: databaseUrl!,
        [identity.portVariable]: String(config.IDENTITY_PORT),
        IDENTITY_BOOTSTRAP_ADMIN_EMAIL: config.IDENTITY_BOOTSTRAP_ADMIN_EMAIL,
        IDENTITY_BOOTSTRAP_API_KEYS: bootstrapKeys,
        MESH_EDGE_SECRET: edgeSecret,
        // user.events, for notifications.
        KAFKA_BROKERS: kafkaBrokers!,
      }),
    },
    {
      name: documents.name,
      entry: "services/documents/main.ts",
      listens: listensOn(documents, config.DOCUMENTS_PORT),
      env: () => ({
        DATABASE_URL: databaseUrl!,
        [documents.portVariable]: String(config.DOCUMENTS_PORT),
        [identity.targetVariable]: identityTarget,
        KAFKA_BROKERS: kafkaBrokers!,
        // Search runs in this mesh: a watch ends when the version is findable, not before.
        DOCUMENTS_WATCH_UNTIL_INDEXED: "true",
      }),
    },
    {
      name: processing.name,
      entry: "services/processing/main.ts",
      listens: listensOn(processing, config.PROCESSING_PORT),
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
      name: search.name,
      entry: "services/search/main.ts",
      listens: listensOn(search, config.SEARCH_PORT),
      // Search gets the shared Postgres only when it is a real server. Embedded, it keeps an
      // embedded database of its own in its process: PGlite is 32-bit (4 GB for everything in
      // one instance), the index is the largest thing the mesh stores, building it is long
      // single-threaded work that would stall every other service's queries on the shared
      // session, and only search needs the pg_textsearch, pgvector and pg_trgm extensions.
      env: () => ({
        DATABASE_URL: config.DATABASE_URL ?? "",
        [search.portVariable]: String(config.SEARCH_PORT),
        KAFKA_BROKERS: kafkaBrokers!,
        [documents.targetVariable]: documentsTarget,
        [identity.targetVariable]: identityTarget,
        SEARCH_API_KEY: searchKey,
      }),
    },
    {
      name: devices.name,
      entry: "services/devices/main.ts",
      listens: listensOn(devices, config.DEVICES_PORT),
      env: () => ({
        DATABASE_URL: databaseUrl!,
        [devices.portVariable]: String(config.DEVICES_PORT),
        KAFKA_BROKERS: kafkaBrokers!,
        [identity.targetVariable]: identityTarget,
        DEVICES_API_KEY: devicesKey,
      }),
    },
    {
      name: notifications.name,
      entry: "services/notifications/main.ts",
      listens: listensOn(notifications, config.NOTIFICATIONS_PORT),
      env: () => ({
        DATABASE_URL: databaseUrl!,
        [notifications.portVariable]: String(config.NOTIFICATIONS_PORT),
        KAFKA_BROKERS: kafkaBrokers!,
        [documents.targetVariable]: documentsTarget,
        [identity.targetVariable]: identityTarget,
        NOTIFICATIONS_API_KEY: notificationsKey,
        SMTP_URL: smtpUrl,
        PUBLIC_URL: process.env.PUBLIC_URL || `http://${loopbackAddress(config.GATEWAY_PORT)}`,
      }),
    },
    {
      name: gateway.name,
      entry: "gateway/main.ts",
      listens: listensOn(gateway, config.GATEWAY_PORT, config.GATEWAY_HOST),
      env: () => ({
        [documents.targetVariable]: documentsTarget,
        [identity.targetVariable]: identityTarget,
        [search.targetVariable]: searchTarget,
        [devices.targetVariable]: devicesTarget,
        [notifications.targetVariable]: notificationsTarget,
        [gateway.portVariable]: String(config.GATEWAY_PORT),
        [gateway.hostVariable]: config.GATEWAY_HOST,
        MESH_EDGE_SECRET: edgeSecret,
      }),
    },
  );

  // Every port is checked before anything starts: a taken one is a sentence naming the variable to
  // change, at once, rather than a component failing after the ones before it came up.
  const taken = await unavailablePorts(components);
  if (taken.length > 0) {
    for (const problem of taken) process.stderr.write(`medmesh: ${problem}\n`);
    process.exit(2);
  }

  const ready: Array<[string, Record<string, string>]> = [];
  try {
    // Storage and the broker depend on nothing and start together, then the services (which
    // need only storage), then what calls the services: the gateway in front of them and the
    // processing worker behind them.
    const infrastructure = new Set<string>([postgres.name, kafka.name, smtp.name]);
    const callers = new Set<string>([gateway.name, processing.name, search.name, devices.name, notifications.name]);
    const stages = [
      components.filter((c) => infrastructure.has(c.name)),
      components.filter((c) => !infrastructure.has(c.name) && !callers.has(c.name)),
      components.filter((c) => callers.has(c.name)),
    ].filter((stage) => stage.length > 0);
    for (const stage of stages) {
      const results = await Promise.allSettled(stage.map((c) => supervisor.start(c)));
      for (const [i, result] of results.entries()) {
        if (result.status === "rejected") throw result.reason;
        const c = stage[i]!;
        ready.push([c.name, result.value]);
        if (c.name === postgres.name) databaseUrl = result.value.postgres;
        if (c.name === kafka.name) kafkaBrokers = result.value.kafka;
      }
    }
  } catch (err) {
    // Stopped by a signal mid-launch: the component it interrupted is no news.
    if (stopping) return;
    // Before its first ready a component is not restarted: a launch that cannot come up says why
    // and stops, rather than retrying a mistake in the configuration for ever.
    log("error", "start failed", { error: (err as Error).message });
    process.stderr.write(`medmesh: ${(err as Error).message}\n`);
    await stopAll(1, "start failed");
    return;
  }
  if (stopping) return;

  const lines: Array<[string, string]> = [];
  const edge = ready.find(([name]) => name === gateway.name)![1];
  lines.push([gateway.name, edge.gateway!]);
  for (const [, endpoints] of ready) {
    for (const [k, v] of Object.entries(endpoints)) if (k !== "gateway") lines.push([k, v]);
  }
  for (const [k, v] of lines) process.stdout.write(`${k} ${v}\n`);
  log("info", "mesh ready", {
    ready_ms: Math.round(performance.now() - started),
    data_dir: path.resolve(config.MEDMESH_DATA_DIR),
    pids: supervisor.pids(),
  });
}

void main();
