import { sql, type Kysely } from "kysely";

/** Resumable (browser) uploads: one row per upload, while it takes parts and for a while after. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("upload_session")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    // The principal that started it; nobody else may see or touch it.
    .addColumn("owner", "text", (c) => c.notNull())
    // The document a version is added to; for a new document only known once completed.
    .addColumn("document_id", "uuid")
    // A new document's metadata waits here: the document row is only written at completion.
    .addColumn("new_document", "jsonb")
    .addColumn("filename", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("declared_mime_type", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("expected_sha256", "text")
    .addColumn("size_bytes", "bigint", (c) => c.notNull())
    .addColumn("next_offset", "bigint", (c) => c.notNull().defaultTo(0))
    // Filled in once the first bytes have been seen, so completion need not look again.
    .addColumn("mime_type", "text")
    .addColumn("needs_ocr", "boolean")
    .addColumn("state", "text", (c) => c.notNull().defaultTo("open"))
    .addColumn("version", "integer")
    .addColumn("sha256", "text")
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("expires_at", "timestamptz", (c) => c.notNull())
    .execute();
  // The sweeper looks for expired rows only.
  await db.schema.createIndex("upload_session_expires_at_idx").on("upload_session").column("expires_at").execute();
}
