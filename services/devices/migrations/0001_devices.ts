import { sql, type Kysely } from "kysely";

/**
 * The registry, the latest state per device and the history. History is keyed by
 * (device_id, sequence): the worker inserts with ON CONFLICT DO NOTHING, so a redelivered or
 * resent event changes nothing, and that key serves as the worker's inbox.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("device")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("owner_id", "text", (c) => c.notNull())
    .addColumn("name", "text", (c) => c.notNull())
    .addColumn("type", "text", (c) => c.notNull())
    .addColumn("api_key_prefix", "text", (c) => c.notNull())
    .addColumn("seq", "bigserial", (c) => c.notNull().unique())
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("revoked_at", "timestamptz")
    .execute();
  await db.schema.createIndex("device_owner_idx").on("device").columns(["owner_id", "seq"]).execute();
  await db.schema
    .createTable("device_state")
    .addColumn("device_id", "uuid", (c) => c.primaryKey())
    .addColumn("sequence", "bigint", (c) => c.notNull())
    .addColumn("event_time", "timestamptz", (c) => c.notNull())
    .addColumn("readings", "jsonb", (c) => c.notNull())
    .addColumn("updated_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
  await db.schema
    .createTable("device_event")
    .addColumn("device_id", "uuid", (c) => c.notNull())
    .addColumn("sequence", "bigint", (c) => c.notNull())
    .addColumn("client_id", "text", (c) => c.notNull())
    .addColumn("event_time", "timestamptz", (c) => c.notNull())
    .addColumn("readings", "jsonb", (c) => c.notNull())
    .addColumn("applied_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addPrimaryKeyConstraint("device_event_pkey", ["device_id", "sequence"])
    .execute();
  // ListDeviceEvents pages by time; retention deletes by time.
  await db.schema
    .createIndex("device_event_time_idx")
    .on("device_event")
    .columns(["device_id", "event_time", "sequence"])
    .execute();
  await db.schema.createIndex("device_event_applied_idx").on("device_event").column("applied_at").execute();
}
