import { sql, type Kysely } from "kysely";

/**
 * Notifications and their deliveries. One notification per (cause, recipient) and one delivery per
 * (cause, recipient, channel), both enforced by unique keys, so a redelivered event or a rerun
 * announcement adds nothing. A user's feed is numbered 1, 2, 3… by feed_head: the row lock taken
 * to number one notification orders that user's inserts, so they become visible in number order
 * and a subscriber can treat a number it has not seen yet as a gap to fill from the table.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("feed_head")
    .addColumn("user_id", "text", (c) => c.primaryKey())
    .addColumn("last_seq", "bigint", (c) => c.notNull())
    .execute();
  await db.schema
    .createTable("notification")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("user_id", "text", (c) => c.notNull())
    .addColumn("seq", "bigint", (c) => c.notNull())
    .addColumn("type", "text", (c) => c.notNull())
    .addColumn("title", "text", (c) => c.notNull())
    .addColumn("body", "text", (c) => c.notNull())
    .addColumn("link", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("attributes", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .addColumn("source_key", "text", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("read_at", "timestamptz")
    .addUniqueConstraint("notification_user_seq_key", ["user_id", "seq"])
    .addUniqueConstraint("notification_source_user_key", ["source_key", "user_id"])
    .execute();
  await db.schema
    .createIndex("notification_unread_idx")
    .on("notification")
    .columns(["user_id", "seq"])
    .where(sql.ref("read_at"), "is", null)
    .execute();

  await db.schema
    .createTable("delivery")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("user_id", "text", (c) => c.notNull())
    .addColumn("channel", "text", (c) => c.notNull().check(sql`channel in ('email', 'push')`))
    .addColumn("type", "text", (c) => c.notNull())
    .addColumn("source_key", "text", (c) => c.notNull())
    .addColumn("variables", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .addColumn("link_id", "text")
    .addColumn("digest", "text")
    .addColumn("state", "text", (c) => c.notNull())
    .addColumn("attempts", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("next_attempt_at", "timestamptz", (c) => c.notNull())
    .addColumn("claimed_until", "timestamptz")
    .addColumn("last_response", "text")
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("sent_at", "timestamptz")
    .addUniqueConstraint("delivery_source_user_channel_key", ["source_key", "user_id", "channel"])
    .execute();
  await db.schema
    .createIndex("delivery_due_idx")
    .on("delivery")
    .columns(["next_attempt_at"])
    .where(sql.ref("state"), "in", sql`('queued', 'sending')`)
    .execute();
  await db.schema
    .createTable("delivery_attempt")
    .addColumn("id", "bigserial", (c) => c.primaryKey())
    .addColumn("delivery_id", "uuid", (c) => c.notNull().references("delivery.id").onDelete("cascade"))
    .addColumn("at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("outcome", "text", (c) => c.notNull())
    .addColumn("response", "text", (c) => c.notNull())
    .execute();
  await db.schema.createIndex("delivery_attempt_delivery_idx").on("delivery_attempt").column("delivery_id").execute();

  await db.schema
    .createTable("preference")
    .addColumn("user_id", "text", (c) => c.notNull())
    .addColumn("type", "text", (c) => c.notNull())
    .addColumn("channel", "text", (c) => c.notNull())
    .addColumn("mode", "text", (c) => c.notNull())
    .addPrimaryKeyConstraint("preference_pkey", ["user_id", "type", "channel"])
    .execute();
  await db.schema
    .createTable("quiet_hours")
    .addColumn("user_id", "text", (c) => c.primaryKey())
    .addColumn("start_minute", "integer", (c) => c.notNull())
    .addColumn("end_minute", "integer", (c) => c.notNull())
    .addColumn("time_zone", "text", (c) => c.notNull())
    .execute();
  await db.schema
    .createTable("recipient")
    .addColumn("user_id", "text", (c) => c.primaryKey())
    .addColumn("email", "text")
    .addColumn("first_name", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("role", "text", (c) => c.notNull())
    .addColumn("updated_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
  await db.schema.createIndex("recipient_role_idx").on("recipient").column("role").execute();

  await db.schema
    .createTable("template")
    .addColumn("type", "text", (c) => c.notNull())
    .addColumn("version", "integer", (c) => c.notNull())
    .addColumn("subject", "text", (c) => c.notNull())
    .addColumn("html_body", "text", (c) => c.notNull())
    .addColumn("text_body", "text", (c) => c.notNull())
    .addColumn("variables", "jsonb", (c) => c.notNull())
    .addColumn("created_by", "text", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addPrimaryKeyConstraint("template_pkey", ["type", "version"])
    .execute();

  await db.schema
    .createTable("push_subscription")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("user_id", "text", (c) => c.notNull())
    .addColumn("endpoint", "text", (c) => c.notNull().unique())
    .addColumn("p256dh", "text", (c) => c.notNull())
    .addColumn("auth", "text", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
  await db.schema.createIndex("push_subscription_user_idx").on("push_subscription").column("user_id").execute();

  await db.schema
    .createTable("announcement")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("title", "text", (c) => c.notNull())
    .addColumn("body", "text", (c) => c.notNull())
    .addColumn("role", "text")
    .addColumn("send_at", "timestamptz", (c) => c.notNull())
    .addColumn("created_by", "text", (c) => c.notNull())
    .addColumn("started_at", "timestamptz")
    .addColumn("done_at", "timestamptz")
    .execute();
}
