import type { Kysely } from "kysely";

/**
 * Which subscriptions a push delivery has reached. A delivery to several browsers that partly
 * fails transiently is retried for the ones it missed only, so a browser that got it is not sent
 * it again. Rows go with their delivery or their subscription.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("push_sent")
    .addColumn("delivery_id", "uuid", (c) => c.notNull().references("delivery.id").onDelete("cascade"))
    .addColumn("subscription_id", "uuid", (c) => c.notNull().references("push_subscription.id").onDelete("cascade"))
    .addPrimaryKeyConstraint("push_sent_pkey", ["delivery_id", "subscription_id"])
    .execute();
}
