import { sql, type Kysely } from "kysely";

/**
 * How far the one-time copy of identity's accounts has got (one row): accounts made before
 * identity published user.events are learned from ListUsers, page by page, and a restart resumes
 * after the last account copied instead of starting over.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("recipient_sync")
    .addColumn("id", "integer", (c) => c.primaryKey().check(sql`id = 1`))
    .addColumn("after_user_id", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("completed_at", "timestamptz")
    .execute();
}
