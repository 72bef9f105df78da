import { sql, type AliasedRawBuilder, type ColumnType, type Generated, type Selectable } from "kysely";

// The tables of the documents schema, as migrations/ creates them. Every other module takes its
// row types from here, so this file imports nothing of the service's own.

export interface DocumentTable {
  id: string;
  seq: Generated<number>;
  title: string;
  /** jsonb, written as JSON text: pg would send an array as a Postgres array. */
  authors: ColumnType<string[], string, string>;
  journal: string | null;
  /** A calendar day, YYYY-MM-DD; read it through `documentColumns`. */
  publication_date: string | null;
  doi: string | null;
  pmid: string | null;
  document_type: string;
  specialty: string | null;
  processing_status: Generated<string>;
  size_bytes: Generated<number>;
  mime_type: string | null;
  uploaded_by: string;
  visibility: string;
  version: Generated<number>;
  metadata: ColumnType<Record<string, string>, string, string>;
  created_at: Generated<Date>;
  updated_at: Generated<Date>;
  deleted_at: Date | null;
}

export interface DocumentVersionTable {
  document_id: string;
  version: number;
  sha256: string;
  size_bytes: number;
  mime_type: string;
  needs_ocr: boolean;
  filename: string;
  uploaded_by: string;
  created_at: Generated<Date>;
  /** The last StartProcessing that let a worker go ahead with this version. */
  started_at: ColumnType<Date | null, never, Date | null>;
  /** The last time the reconciler re-drove the version; see reconciler.ts. */
  redriven_at: ColumnType<Date | null, never, Date | null>;
  redrives: Generated<number>;
  /** Re-drives a worker started on that still produced no outcome. */
  stalled_redrives: Generated<number>;
}

export interface DocumentStatusTable {
  seq: Generated<number>;
  document_id: string;
  version: number;
  status: string;
  failure_reason: string | null;
  failure_message: string | null;
  created_at: Generated<Date>;
}

export interface ProcessingOutcomeTable {
  document_id: string;
  version: number;
  /** "processed" or "failed". */
  status: string;
  /** ProcessingResult, protobuf binary; set when processed. */
  result: Uint8Array | null;
  failure_reason: string | null;
  failure_message: string | null;
  created_at: Generated<Date>;
}

export type UploadState = "open" | "completed";

export interface UploadSessionTable {
  id: string;
  owner: string;
  document_id: string | null;
  /** Written as JSON text, read back parsed. */
  new_document: ColumnType<NewDocument | null, string | null, string | null>;
  filename: string;
  declared_mime_type: string;
  expected_sha256: string | null;
  size_bytes: number;
  next_offset: Generated<number>;
  mime_type: string | null;
  needs_ocr: boolean | null;
  state: Generated<UploadState>;
  version: number | null;
  sha256: string | null;
  created_at: Generated<Date>;
  expires_at: Date;
}

export interface DocumentsDB {
  document: DocumentTable;
  document_version: DocumentVersionTable;
  document_status: DocumentStatusTable;
  processing_outcome: ProcessingOutcomeTable;
  upload_session: UploadSessionTable;
}

/**
 * How a document row is read, column by column. The compiler holds it to exactly the columns of
 * DocumentTable, so a new column cannot be forgotten here. The date alone is read as text: pg and
 * PGlite would each make a Date of it at a different midnight, and a calendar day must not move
 * with the reader's time zone.
 */
export const documentColumns = Object.values({
  id: "id",
  seq: "seq",
  title: "title",
  authors: "authors",
  journal: "journal",
  publication_date: sql<string | null>`to_char(publication_date, 'YYYY-MM-DD')`.as("publication_date"),
  doi: "doi",
  pmid: "pmid",
  document_type: "document_type",
  specialty: "specialty",
  processing_status: "processing_status",
  size_bytes: "size_bytes",
  mime_type: "mime_type",
  uploaded_by: "uploaded_by",
  visibility: "visibility",
  version: "version",
  metadata: "metadata",
  created_at: "created_at",
  updated_at: "updated_at",
  deleted_at: "deleted_at",
} as const satisfies { [C in keyof DocumentTable]: C | AliasedRawBuilder<unknown, C> });

export type DocumentRow = Selectable<DocumentTable>;
export type VersionRow = Selectable<DocumentVersionTable>;
export type StatusRow = Selectable<DocumentStatusTable>;
export type OutcomeRow = Selectable<ProcessingOutcomeTable>;

/** What a create supplies; the rest is the database's (sequence, status, timestamps, content). */
export type NewDocument = Omit<
  Selectable<DocumentTable>,
  "seq" | "processing_status" | "size_bytes" | "mime_type" | "version" | "created_at" | "updated_at" | "deleted_at"
>;

/** What UpdateDocument may change: what a create supplies, less identity and ownership. */
export type DocumentChanges = Partial<Omit<NewDocument, "id" | "uploaded_by">>;

export type NewVersion = Omit<
  DocumentVersionTable,
  "document_id" | "version" | "created_at" | "started_at" | "redriven_at" | "redrives" | "stalled_redrives"
>;
