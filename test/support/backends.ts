import { randomBytes } from "node:crypto";

export interface Backend {
  name: "pglite" | "postgres";
  /** Environment for a service process (or in-process start) using this backend. */
  env: Record<string, string>;
}

/**
 * The databases integration tests run against: always embedded PGlite, and the real Postgres
 * server too when DATABASE_URL is set (CI sets it). Each run gets a fresh schema so runs and
 * parallel test files never see each other's rows.
 */
export function backends(): Backend[] {
  const schema = `documents_t${randomBytes(4).toString("hex")}`;
  const list: Backend[] = [{ name: "pglite", env: { MEDMESH_DATA_DIR: "memory://", DOCUMENTS_DB_SCHEMA: schema } }];
  const url = process.env.DATABASE_URL;
  if (url) list.push({ name: "postgres", env: { DATABASE_URL: url, DOCUMENTS_DB_SCHEMA: schema } });
  return list;
}

/** Settings every in-process test server shares: ephemeral ports, quiet logs. */
export const testEnv: Record<string, string> = {
  DOCUMENTS_PORT: "0",
  GATEWAY_PORT: "0",
  LOG_LEVEL: "error",
  SHUTDOWN_GRACE_MS: "2000",
};
