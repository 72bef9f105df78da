import type { Kysely } from "kysely";
import { outboxClaimsMigration } from "../../../platform/events/index.js";

/** Lets the relay claim outbox rows and publish them with no transaction open. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await outboxClaimsMigration.up(db);
}
