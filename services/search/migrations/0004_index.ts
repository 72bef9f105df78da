import { sql, type Kysely } from "kysely";

/**
 * The index: one row per live document, holding its current version's text and metadata.
 *
 * The tsvector is generated from the text columns with field weights (title A; abstract,
 * keywords and entities B; body C), so matching, highlighting and the ts_rank_cd fallback all
 * read one column the database keeps in step. The BM25 index, when the server has
 * pg_textsearch, is made at start (bm25.ts) rather than here: whether it can exist depends on the
 * server, not on the schema version.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`create extension if not exists pg_trgm`.execute(db);
  await db.schema
    .createTable("indexed_document")
    .addColumn("document_id", "uuid", (c) => c.primaryKey())
    .addColumn("version", "integer", (c) => c.notNull())
    .addColumn("title", "text", (c) => c.notNull())
    .addColumn("abstract", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("body", "text", (c) => c.notNull().defaultTo(""))
    // Space-joined copies of the lists below, for the text columns.
    .addColumn("keyword_text", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("entity_text", "text", (c) => c.notNull().defaultTo(""))
    // jsonb arrays of strings: filters test containment, facets unnest them.
    .addColumn("authors", "jsonb", (c) => c.notNull().defaultTo(sql`'[]'::jsonb`))
    .addColumn("entities", "jsonb", (c) => c.notNull().defaultTo(sql`'[]'::jsonb`))
    .addColumn("keywords", "jsonb", (c) => c.notNull().defaultTo(sql`'[]'::jsonb`))
    .addColumn("journal", "text")
    .addColumn("specialty", "text")
    .addColumn("document_type", "text", (c) => c.notNull())
    .addColumn("publication_date", "date")
    .addColumn("visibility", "text", (c) => c.notNull())
    .addColumn("owner", "text", (c) => c.notNull())
    .addColumn("indexed_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("search_tsv", sql`tsvector`, (c) =>
      c
        .generatedAlwaysAs(
          sql`setweight(to_tsvector('english', title), 'A') ||
              setweight(to_tsvector('english', abstract || ' ' || keyword_text || ' ' || entity_text), 'B') ||
              setweight(to_tsvector('english', body), 'C')`,
        )
        .stored(),
    )
    // What BM25 scores: one column, the title twice so that it weighs more.
    .addColumn("bm25_text", "text", (c) =>
      c
        .generatedAlwaysAs(
          sql`title || ' ' || title || ' ' || abstract || ' ' || keyword_text || ' ' || entity_text || ' ' || body`,
        )
        .stored(),
    )
    .execute();
  await db.schema
    .createIndex("indexed_document_tsv_idx")
    .on("indexed_document")
    .using("gin")
    .column("search_tsv")
    .execute();
  await db.schema
    .createIndex("indexed_document_date_idx")
    .on("indexed_document")
    .columns(["publication_date", "document_id"])
    .execute();
  await db.schema
    .createIndex("indexed_document_title_trgm_idx")
    .on("indexed_document")
    .using("gin")
    .expression(sql`lower(title) gin_trgm_ops`)
    .execute();

  // Words and names seen in the index: did-you-mean and Suggest look for the closest.
  await db.schema
    .createTable("vocabulary")
    // word: a single word of the text (did-you-mean); entity, author: whole names (Suggest).
    .addColumn("kind", "text", (c) => c.notNull())
    .addColumn("word", "text", (c) => c.notNull())
    .addPrimaryKeyConstraint("vocabulary_pkey", ["kind", "word"])
    .execute();
  await db.schema
    .createIndex("vocabulary_trgm_idx")
    .on("vocabulary")
    .using("gin")
    .expression(sql`word gin_trgm_ops`)
    .execute();
}
