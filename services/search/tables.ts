import type { ColumnType, Generated } from "kysely";
import type { InboxDatabase, OutboxDatabase } from "../../platform/events/index.js";

// The tables of the search schema, as migrations/ creates them.

/** jsonb arrays, written as JSON text (pg would send a JS array as a Postgres array). */
type JsonList = ColumnType<string[], string, string>;

export interface IndexedDocumentTable {
  document_id: string;
  version: number;
  title: string;
  abstract: string;
  body: string;
  keyword_text: string;
  entity_text: string;
  authors: JsonList;
  entities: JsonList;
  keywords: JsonList;
  journal: string | null;
  specialty: string | null;
  document_type: string;
  /** A calendar day, YYYY-MM-DD. */
  publication_date: ColumnType<string | null, string | null, string | null>;
  /** "private" or "platform", as documents names them. */
  visibility: string;
  owner: string;
  indexed_at: Generated<Date>;
  search_tsv: ColumnType<string, never, never>;
  bm25_text: ColumnType<string, never, never>;
  /** The title alone (migration 0006): bounded candidate sets take title matches first. */
  title_tsv: ColumnType<string, never, never>;
  /** pgvector's vector, only where vectors.ts made the column; written as `$literal::vector`. */
  embedding: ColumnType<string | null, unknown, unknown>;
}

export interface VocabularyTable {
  kind: string;
  word: string;
}

export interface SearchStatTable {
  hour: Date;
  normalized_query: string;
  searches: number;
  zero_results: number;
}

export interface SearchDB extends InboxDatabase, OutboxDatabase {
  indexed_document: IndexedDocumentTable;
  vocabulary: VocabularyTable;
  search_stat: SearchStatTable;
}

/** What the indexer writes for one document's current version. */
export interface IndexRow {
  document_id: string;
  version: number;
  title: string;
  abstract: string;
  body: string;
  authors: string[];
  entities: string[];
  keywords: string[];
  journal: string | null;
  specialty: string | null;
  document_type: string;
  publication_date: string | null;
  visibility: string;
  owner: string;
}

/** The part of a row that documents may change without a new version. */
export type IndexMetadata = Pick<
  IndexRow,
  "title" | "authors" | "journal" | "specialty" | "document_type" | "publication_date" | "visibility" | "owner"
>;
