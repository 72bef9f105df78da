import { Migrator, type Kysely, type Migration } from "kysely";

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
    db,
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
