import { mkdirSync } from "node:fs";
import { PGlite, type Extensions } from "@electric-sql/pglite";
import { Kysely, PostgresDialect, sql, type Dialect } from "kysely";
import pg from "pg";
import { PGliteDialect } from "./pglite-dialect.js";
import { tracedDialect } from "./traced-dialect.js";
import path from "node:path";
import type { Migration } from "kysely";
import { migrateToLatest } from "./migrate.js";

// Postgres bigint (int8) and numeric arrive as strings from pg by default; counts and sizes in
// this mesh fit in a double, and PGlite already returns numbers, so both paths agree.
pg.types.setTypeParser(20, (v) => Number(v));

export interface DatabaseOptions {
  /** postgres://… to use a real server; otherwise an embedded PGlite under dataDir. */
  url?: string;
  /** Directory for the embedded PGlite; "memory://" keeps it in memory. */
  dataDir: string;
  /** The service's own schema: every table it owns lives there. */
  schema: string;
  poolMax?: number;
  /** PGlite extensions to load into the embedded database (a real server has its own). */
  extensions?: Extensions;
}

export interface Database<DB> {
  /** Scoped to the service's schema: table names need no prefix. */
  db: Kysely<DB>;
  kind: "postgres" | "pglite";
  ping(timeoutMs?: number): Promise<boolean>;
  close(): Promise<void>;
}

/**
 * Opens the service's database. Each service owns one schema; queries are scoped to it with
 * Kysely's withSchema rather than search_path, because the embedded server multiplexes several
 * clients onto one Postgres session where a session setting would leak between services.
 */
export async function openDatabase<DB>(opts: DatabaseOptions): Promise<Database<DB>> {
  let dialect: Dialect;
  let kind: Database<DB>["kind"];
  let pool: pg.Pool | undefined;
  if (opts.url) {
    pool = new pg.Pool({
      connectionString: opts.url,
      max: opts.poolMax ?? 10,
      connectionTimeoutMillis: 5_000,
      idleTimeoutMillis: 30_000,
      // Names the service's sessions in pg_stat_activity (an application_name in the URL wins).
      application_name: `medmesh ${opts.schema}`,
    });
    // A connection that dies (server restart, pg_terminate_backend, a network cut) makes its pg
    // client emit 'error'. pg-pool listens only while the client is idle in the pool; a client
    // checked out for a query has no listener, so the emit would end the process. The query
    // in flight is rejected with the same error, which the caller answers as `unavailable`
    // (platform/grpc/errors.ts); the dead client is not queryable, so its release drops it and
    // the next query opens a fresh connection.
    pool.on("connect", (client) => client.on("error", () => undefined));
    // The same for idle clients, which the pool has already removed when it reports this.
    pool.on("error", () => undefined);
    dialect = new PostgresDialect({ pool });
    kind = "postgres";
  } else {
    if (opts.dataDir !== "memory://") mkdirSync(opts.dataDir, { recursive: true });
    const embedded = await PGlite.create({
      dataDir: opts.dataDir === "memory://" ? undefined : opts.dataDir,
      extensions: opts.extensions,
    });
    dialect = new PGliteDialect(embedded);
    kind = "pglite";
  }
  const root = new Kysely<DB>({ dialect: tracedDialect(dialect, opts.schema) });
  await sql`create schema if not exists ${sql.id(opts.schema)}`.execute(root);
  return {
    db: root.withSchema(opts.schema),
    kind,
    async ping(timeoutMs = 2_000) {
      const timeout = new Promise<boolean>((r) => setTimeout(() => r(false), timeoutMs).unref());
      const check = sql`select 1`.execute(root).then(
        () => true,
        () => false,
      );
      return Promise.race([check, timeout]);
    },
    async close() {
      await root.destroy();
    },
  };
}

/**
 * A service's database, migrated: its own schema on DATABASE_URL, or its own in-process PGlite
 * under MEDMESH_DATA_DIR/pglite-<service> when no server is configured.
 */
export async function openServiceDatabase<DB>(
  service: string,
  config: { DATABASE_URL?: string; MEDMESH_DATA_DIR: string; DB_POOL_MAX: number },
  schema: string,
  migrations: Record<string, Migration>,
  extensions?: Extensions,
): Promise<Database<DB>> {
  const database = await openDatabase<DB>({
    extensions,
    url: config.DATABASE_URL,
    dataDir:
      config.MEDMESH_DATA_DIR === "memory://" ? "memory://" : path.join(config.MEDMESH_DATA_DIR, `pglite-${service}`),
    schema,
    poolMax: config.DB_POOL_MAX,
  });
  await migrateToLatest(database.db as never, schema, migrations);
  return database;
}
