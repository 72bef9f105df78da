import type { Kysely } from "kysely";
import { outboxMigration } from "../../../platform/events/index.js";

/** The outbox: DocumentIndexed is written with the index row it announces. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await outboxMigration.up(db);
}
