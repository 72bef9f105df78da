import { promises as fs } from "node:fs";
import path from "node:path";
import { Migrator, FileMigrationProvider, type Kysely } from "kysely";

/**
 * Applies a service's forward-only migrations (services/<name>/migrations/NNNN_name.ts, each
 * exporting `up`). The bookkeeping tables live in the service's own schema, so services never
 * contend for one lock table.
 */
export async function migrateToLatest(db: Kysely<unknown>, schema: string, folder: string): Promise<string[]> {
  const migrator = new Migrator({
    db,
    provider: new FileMigrationProvider({ fs, path, migrationFolder: folder }),
    migrationTableSchema: schema,
  });
  const { error, results } = await migrator.migrateToLatest();
  const failed = results?.find((r) => r.status === "Error");
  if (error || failed) {
    throw new Error(`migration ${failed?.migrationName ?? ""} of schema ${schema} failed: ${(error as Error)?.message ?? "unknown"}`);
  }
  return (results ?? []).filter((r) => r.status === "Success").map((r) => r.migrationName);
}
