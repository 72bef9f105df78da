import { Migrator, sql, type DatabaseIntrospector, type Kysely, type Migration } from "kysely";

/**
 * Applies a service's forward-only migrations. Each service lists its migrations in
 * migrations/index.ts with static imports, so the set that runs is exactly what was built and
 * tested (no directory scan that a stray file could join). The bookkeeping tables live in the
 * service's own schema, so services never contend for one lock table.
 */
export async function migrateToLatest(
  db: Kysely<unknown>,
  schema: string,
  migrations: Record<string, Migration>,
): Promise<string[]> {
  const migrator = new Migrator({
    db: withIntrospectionOf(db, schema),
    provider: { getMigrations: async () => migrations },
    migrationTableSchema: schema,
  });
  const { error, results } = await migrator.migrateToLatest();
  const failed = results?.find((r) => r.status === "Error");
  if (error || failed) {
    throw new Error(
      `migration ${failed?.migrationName ?? ""} of schema ${schema} failed: ${(error as Error)?.message ?? "unknown"}`,
    );
  }
  return (results ?? []).filter((r) => r.status === "Success").map((r) => r.migrationName);
}

/**
 * The migrator asks "does my schema / my table exist?" through kysely's introspector, which lists
 * every table of every schema and calls has_schema_privilege() and pg_get_serial_sequence() on each.
 * Those functions raise "schema ... does not exist" when another session drops a schema while the
 * listing runs, so one service starting while another's schema is dropped (tests, a reset) failed
 * its migration. The answer only needs this schema's own names, which plain catalog reads give.
 */
function withIntrospectionOf(db: Kysely<unknown>, schema: string): Kysely<unknown> {
  const introspection: DatabaseIntrospector = {
    async getSchemas() {
      const { rows } = await sql<{ name: string }>`
        select nspname as name from pg_catalog.pg_namespace where nspname = ${schema}`.execute(db);
      return rows;
    },
    async getTables() {
      const { rows } = await sql<{ name: string; is_view: boolean }>`
        select c.relname as name, c.relkind = 'v' as is_view
        from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where n.nspname = ${schema} and c.relkind in ('r', 'p', 'v')`.execute(db);
      return rows.map((r) => ({ name: r.name, schema, isView: r.is_view, columns: [] }));
    },
    async getMetadata(options) {
      return { tables: await this.getTables(options) };
    },
  };
  return new Proxy(db, {
    get(target, property) {
      if (property === "introspection") return introspection;
      const value = Reflect.get(target, property, target);
      // Kysely keeps its state in private fields, which only the real instance can read.
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}
