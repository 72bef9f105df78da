import type { Kysely } from "kysely";

/**
 * Search analytics, aggregated per hour and normalized query from search.events: enough for top
 * queries and zero-result queries over any window of whole hours, without keeping every search.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("search_stat")
    .addColumn("hour", "timestamptz", (c) => c.notNull())
    .addColumn("normalized_query", "text", (c) => c.notNull())
    .addColumn("searches", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("zero_results", "integer", (c) => c.notNull().defaultTo(0))
    .addPrimaryKeyConstraint("search_stat_pkey", ["hour", "normalized_query"])
    .execute();
  await db.schema.createIndex("search_stat_hour_idx").on("search_stat").column("hour").execute();
}
