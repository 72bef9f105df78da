import type { Kysely } from "kysely";
import { inboxMigration } from "../../../platform/events/index.js";

/** The inbox: which document events each of the consumer groups of search has handled. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await inboxMigration.up(db);
}
