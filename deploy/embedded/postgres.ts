import { mkdirSync } from "node:fs";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { env, loadConfig } from "../../platform/config/env.js";
import { components, hostField, portField } from "../../platform/config/components.js";
import { configureLogging } from "../../platform/telemetry/logger.js";
import { isEntryPoint, runMain, type Started } from "../../platform/lifecycle/run-main.js";
import { PgMultiplexer } from "./pg-multiplexer.js";

export const configSpec = {
  MEDMESH_DATA_DIR: env.string("where embedded data lives", ".data"),
  ...hostField(components.postgres, "interface the embedded Postgres binds"),
  ...portField(components.postgres, "port of the embedded Postgres"),
  EMBEDDED_PG_MAX_CONNECTIONS: env.int("client connections the embedded Postgres multiplexes", 64, 1, 1000),
};

/**
 * Real Postgres (PGlite: Postgres compiled to WebAssembly) behind the Postgres wire protocol,
 * so services reach it with pg over TCP exactly as they reach a production server. PGlite is a
 * single session; pg-multiplexer.ts shares it between connections a whole query, extended-protocol
 * run or transaction at a time.
 */
export async function startEmbeddedPostgres(
  source: Record<string, string | undefined> = process.env,
): Promise<Started & { url: string }> {
  const config = loadConfig(configSpec, source);
  configureLogging({ service: "postgres" });
  // memory:// means what it means for the services: nothing kept once the process ends.
  let dir: string | undefined;
  if (config.MEDMESH_DATA_DIR !== "memory://") {
    dir = path.resolve(config.MEDMESH_DATA_DIR, "postgres");
    mkdirSync(dir, { recursive: true });
  }
  const db = dir ? await PGlite.create(dir) : await PGlite.create();
  const server = new PgMultiplexer({
    db,
    host: config.EMBEDDED_PG_HOST,
    port: config.EMBEDDED_PG_PORT,
    maxConnections: config.EMBEDDED_PG_MAX_CONNECTIONS,
  });
  await server.start();
  const url = `postgres://postgres@${config.EMBEDDED_PG_HOST}:${server.port}/postgres?sslmode=disable`;
  return {
    url,
    endpoints: { postgres: url },
    async stop() {
      await server.stop();
      await db.close();
    },
  };
}

if (isEntryPoint(import.meta.url)) void runMain("postgres", () => startEmbeddedPostgres());
