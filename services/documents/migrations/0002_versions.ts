import { sql, type Kysely } from "kysely";

export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("document_version")
    .addColumn("document_id", "uuid", (c) => c.notNull().references("document.id"))
    .addColumn("version", "integer", (c) => c.notNull())
    .addColumn("sha256", "text", (c) => c.notNull())
    .addColumn("size_bytes", "bigint", (c) => c.notNull())
    .addColumn("mime_type", "text", (c) => c.notNull())
    .addColumn("needs_ocr", "boolean", (c) => c.notNull().defaultTo(false))
    .addColumn("filename", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("uploaded_by", "text", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addPrimaryKeyConstraint("document_version_pkey", ["document_id", "version"])
    .execute();
}
