import type { Kysely } from "kysely";
import { outboxMigration } from "../../../platform/events/index.js";

/** The outbox: DocumentProcessed/DocumentFailed are written with the inbox row of the upload they answer. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await outboxMigration.up(db);
}
