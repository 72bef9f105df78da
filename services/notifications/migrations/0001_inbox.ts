import type { Kysely } from "kysely";
import { inboxMigration } from "../../../platform/events/index.js";

/** The inbox: which document and user events each consumer group has turned into notifications. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await inboxMigration.up(db);
}
