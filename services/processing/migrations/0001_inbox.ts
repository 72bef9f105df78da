import type { Kysely } from "kysely";
import { inboxMigration } from "../../../platform/events/index.js";

/** The inbox: which upload events this consumer group has handled, so a redelivery is a no-op. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await inboxMigration.up(db);
}
