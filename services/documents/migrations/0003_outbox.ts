import type { Kysely } from "kysely";
import { outboxMigration } from "../../../platform/events/index.js";

/** The transactional outbox: document events are written with the change they describe. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await outboxMigration.up(db);
}
