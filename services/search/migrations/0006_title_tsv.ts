import { sql, type Kysely } from "kysely";

/**
 * The title's own tsvector with its own GIN index. A word that matches more documents than a
 * search ranks exactly (store.ts, the bounded shape) is bounded to a candidate set; with this
 * column the documents whose title has the words are taken first, so the candidates are the
 * likeliest best rather than the first matches in storage order. Generated like search_tsv, so
 * the database keeps it in step with the title (a title change by DocumentUpdated included).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .alterTable("indexed_document")
    .addColumn("title_tsv", sql`tsvector`, (c) => c.generatedAlwaysAs(sql`to_tsvector('english', title)`).stored())
    .execute();
  await db.schema
    .createIndex("indexed_document_title_tsv_idx")
    .on("indexed_document")
    .using("gin")
    .column("title_tsv")
    .execute();
}
