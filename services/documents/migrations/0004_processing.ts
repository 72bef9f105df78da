import { sql, type Kysely } from "kysely";

export async function up(db: Kysely<unknown>): Promise<void> {
  // Every status a document passes through, in order: what WatchDocument replays to watchers,
  // and a record of when each step happened.
  await db.schema
    .createTable("document_status")
    .addColumn("seq", "bigserial", (c) => c.primaryKey())
    .addColumn("document_id", "uuid", (c) => c.notNull().references("document.id"))
    .addColumn("version", "integer", (c) => c.notNull())
    .addColumn("status", "text", (c) => c.notNull())
    .addColumn("failure_reason", "text")
    .addColumn("failure_message", "text")
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
  await db.schema
    .createIndex("document_status_document_seq_idx")
    .on("document_status")
    .columns(["document_id", "seq"])
    .execute();

  // One outcome per version; the primary key is what makes recording it idempotent.
  await db.schema
    .createTable("processing_outcome")
    .addColumn("document_id", "uuid", (c) => c.notNull().references("document.id"))
    .addColumn("version", "integer", (c) => c.notNull())
    .addColumn("status", "text", (c) => c.notNull())
    // The ProcessingResult message as protobuf binary: the contract is its schema.
    .addColumn("result", "bytea")
    .addColumn("failure_reason", "text")
    .addColumn("failure_message", "text")
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addPrimaryKeyConstraint("processing_outcome_pkey", ["document_id", "version"])
    .execute();

  // Documents that predate this table get their current status as their first entry.
  const scoped = db as Kysely<any>;
  await scoped
    .insertInto("document_status")
    .columns(["document_id", "version", "status", "created_at"])
    .expression(
      scoped.selectFrom("document").select(["id", "version", "processing_status", "updated_at"]).orderBy("seq"),
    )
    .execute();
}
