import { sql, type Kysely } from "kysely";
import { outboxClaimsMigration, outboxMigration } from "../../../platform/events/index.js";

/**
 * user.events through an outbox, and an id per single-use link: the event names the link by this
 * id, and IssueAccountLink gives the link a fresh token when the message is written, so the token
 * itself is never in an event.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await outboxMigration.up(db);
  await outboxClaimsMigration.up(db);
  await db.schema
    .alterTable("one_time_tokens")
    .addColumn("id", "uuid", (c) => c.notNull().defaultTo(sql`gen_random_uuid()`))
    .execute();
  await db.schema.createIndex("one_time_tokens_id_idx").on("one_time_tokens").column("id").unique().execute();
}
