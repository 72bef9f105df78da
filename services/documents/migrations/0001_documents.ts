import { sql, type Kysely } from "kysely";

export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("document")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    // Insertion order, for a listing cursor that neither skips nor repeats rows.
    .addColumn("seq", "bigserial", (c) => c.notNull().unique())
    .addColumn("title", "text", (c) => c.notNull())
    .addColumn("authors", "jsonb", (c) => c.notNull().defaultTo(sql`'[]'::jsonb`))
    .addColumn("journal", "text")
    .addColumn("publication_date", "date")
    .addColumn("doi", "text")
    .addColumn("pmid", "text")
    .addColumn("document_type", "text", (c) => c.notNull())
    .addColumn("specialty", "text")
    .addColumn("processing_status", "text", (c) => c.notNull().defaultTo("pending"))
    .addColumn("size_bytes", "bigint", (c) => c.notNull().defaultTo(0))
    .addColumn("mime_type", "text")
    .addColumn("uploaded_by", "text", (c) => c.notNull())
    .addColumn("visibility", "text", (c) => c.notNull())
    .addColumn("version", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("metadata", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("updated_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("deleted_at", "timestamptz")
    .execute();

  // DOIs are case-insensitive; a deleted document gives its DOI back.
  await db.schema
    .createIndex("document_doi_live_key")
    .on("document")
    .unique()
    .expression(sql`lower(doi)`)
    .where(sql.ref("deleted_at"), "is", null)
    .execute();
  await db.schema
    .createIndex("document_live_seq_idx")
    .on("document")
    .column("seq")
    .where(sql.ref("deleted_at"), "is", null)
    .execute();
  await db.schema.createIndex("document_uploaded_by_idx").on("document").columns(["uploaded_by", "seq"]).execute();
  await db.schema.createIndex("document_specialty_idx").on("document").columns(["specialty", "seq"]).execute();
}
