import { type Kysely } from "kysely";

/**
 * What the reconciler needs to find versions stuck on their way through processing, and to stop
 * re-driving one that never finishes (reconciler.ts).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .alterTable("document_version")
    // The last time a worker was told to go ahead with this version (StartProcessing).
    .addColumn("started_at", "timestamptz")
    // The last time the reconciler sent the version to processing again, and how often it has.
    .addColumn("redriven_at", "timestamptz")
    .addColumn("redrives", "integer", (c) => c.notNull().defaultTo(0))
    // Re-drives a worker took up (started after them) that still produced no outcome.
    .addColumn("stalled_redrives", "integer", (c) => c.notNull().defaultTo(0))
    .execute();
}
