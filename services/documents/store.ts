import type { Generated, Kysely, Selectable } from "kysely";
import { sql } from "kysely";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { DocumentUploadedSchema } from "../../gen/medmesh/events/v1/document_events_pb.js";
import { contractEvent, enqueue } from "../../platform/events/index.js";
import type { UploadSessionTable } from "./upload-sessions.js";

export interface DocumentTable {
  id: string;
  seq: Generated<number>;
  title: string;
  authors: string[];
  journal: string | null;
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
  metadata: Record<string, string>;
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

export interface DocumentsDB {
  document: DocumentTable;
  document_version: DocumentVersionTable;
  document_status: DocumentStatusTable;
  processing_outcome: ProcessingOutcomeTable;
  upload_session: UploadSessionTable;
}

export type StatusRow = Selectable<DocumentStatusTable>;
export type OutcomeRow = Selectable<ProcessingOutcomeTable>;

export type VersionRow = Selectable<DocumentVersionTable>;
export type NewVersion = Omit<DocumentVersionTable, "document_id" | "version" | "created_at">;

export type DocumentRow = Selectable<DocumentTable>;

/** What a create supplies; the rest is the database's (sequence, status, timestamps, content). */
export type NewDocument = Omit<
  DocumentTable,
  "seq" | "processing_status" | "size_bytes" | "mime_type" | "version" | "created_at" | "updated_at" | "deleted_at"
>;

export type DocumentChanges = Partial<Omit<NewDocument, "id" | "uploaded_by">>;

export interface ListFilter {
  specialty?: string;
  document_type?: string;
  processing_status?: string;
  uploaded_by?: string;
  published_after?: string;
  published_before?: string;
  /** Only documents this principal may see: platform ones and its own. Unset for admins. */
  visible_to?: string;
}

// publication_date goes out as text so no time zone can shift the calendar day.
const columns = [
  "id",
  "seq",
  "title",
  "authors",
  "journal",
  sql<string | null>`to_char(publication_date, 'YYYY-MM-DD')`.as("publication_date"),
  "doi",
  "pmid",
  "document_type",
  "specialty",
  "processing_status",
  "size_bytes",
  "mime_type",
  "uploaded_by",
  "visibility",
  "version",
  "metadata",
  "created_at",
  "updated_at",
  "deleted_at",
] as const;

/** Every query of the documents service; the schema is already scoped by openDatabase. */
export class DocumentStore {
  /** `onStatusChange` hears of each committed status change, so watchers need not wait to poll. */
  constructor(
    private readonly db: Kysely<DocumentsDB>,
    private readonly onStatusChange?: (documentId: string) => void,
  ) {}

  async insert(doc: NewDocument): Promise<DocumentRow> {
    if (!this.db.isTransaction) {
      const row = await this.db.transaction().execute((trx) => new DocumentStore(trx).insert(doc));
      this.onStatusChange?.(row.id);
      return row;
    }
    const row = (await this.db
      .insertInto("document")
      .values({
        ...doc,
        authors: JSON.stringify(doc.authors) as never,
        metadata: JSON.stringify(doc.metadata) as never,
      })
      .returning(columns)
      .executeTakeFirstOrThrow()) as DocumentRow;
    await this.recordStatus(row.id, 0, "pending");
    return row;
  }

  /** Appends to the document's status history; call it in the transaction that changes the status. */
  async recordStatus(
    documentId: string,
    version: number,
    status: string,
    failure?: { reason: string; message: string },
  ): Promise<void> {
    await this.db
      .insertInto("document_status")
      .values({
        document_id: documentId,
        version,
        status,
        failure_reason: failure?.reason ?? null,
        failure_message: failure?.message ?? null,
      })
      .execute();
  }

  async findLive(id: string): Promise<DocumentRow | undefined> {
    return this.db
      .selectFrom("document")
      .select(columns)
      .where("id", "=", id)
      .where("deleted_at", "is", null)
      .executeTakeFirst() as Promise<DocumentRow | undefined>;
  }

  /** The live document holding this DOI (case-insensitively), other than `exceptId`. */
  async findLiveByDoi(doi: string, exceptId?: string): Promise<{ id: string } | undefined> {
    let q = this.db
      .selectFrom("document")
      .select("id")
      .where(sql`lower(doi)`, "=", doi.toLowerCase())
      .where("deleted_at", "is", null);
    if (exceptId) q = q.where("id", "<>", exceptId);
    return q.executeTakeFirst();
  }

  /** Newest first; `afterSeq` is the cursor: rows strictly older than it. */
  async list(filter: ListFilter, limit: number, afterSeq?: number): Promise<DocumentRow[]> {
    let q = this.db.selectFrom("document").select(columns).where("deleted_at", "is", null);
    if (filter.specialty) q = q.where(sql`lower(specialty)`, "=", filter.specialty.toLowerCase());
    if (filter.document_type) q = q.where("document_type", "=", filter.document_type);
    if (filter.processing_status) q = q.where("processing_status", "=", filter.processing_status);
    if (filter.uploaded_by) q = q.where("uploaded_by", "=", filter.uploaded_by);
    if (filter.published_after) q = q.where("publication_date", ">=", filter.published_after);
    if (filter.published_before) q = q.where("publication_date", "<=", filter.published_before);
    if (filter.visible_to !== undefined) {
      const who = filter.visible_to;
      q = q.where((eb) => eb.or([eb("visibility", "=", "platform"), eb("uploaded_by", "=", who)]));
    }
    if (afterSeq !== undefined) q = q.where("seq", "<", afterSeq);
    return q.orderBy("seq", "desc").limit(limit).execute() as Promise<DocumentRow[]>;
  }

  async update(id: string, changes: DocumentChanges): Promise<DocumentRow | undefined> {
    const values: Record<string, unknown> = { ...changes, updated_at: sql`now()` };
    if (changes.authors) values.authors = JSON.stringify(changes.authors);
    if (changes.metadata) values.metadata = JSON.stringify(changes.metadata);
    return this.db
      .updateTable("document")
      .set(values as never)
      .where("id", "=", id)
      .where("deleted_at", "is", null)
      .returning(columns)
      .executeTakeFirst() as Promise<DocumentRow | undefined>;
  }

  /**
   * Records a new content version, and the document itself first when `create` is given, in one
   * transaction: the version number comes from the locked document row, so two uploads racing on
   * one document get consecutive numbers.
   */
  async addVersion(
    target: { id: string } | { create: NewDocument },
    v: NewVersion,
    /** Runs in the same transaction once the version is written; throwing undoes the version. */
    within?: (trx: Kysely<DocumentsDB>, saved: { document: DocumentRow; version: VersionRow }) => Promise<void>,
  ): Promise<{ document: DocumentRow; version: VersionRow } | undefined> {
    const saved = await this.db.transaction().execute(async (trx) => {
      const store = new DocumentStore(trx);
      const id = "create" in target ? (await store.insert(target.create)).id : target.id;
      const current = await trx
        .selectFrom("document")
        .select("version")
        .where("id", "=", id)
        .where("deleted_at", "is", null)
        .forUpdate()
        .executeTakeFirst();
      if (!current) return undefined;
      const version = await trx
        .insertInto("document_version")
        .values({ ...v, document_id: id, version: current.version + 1 })
        .returningAll()
        .executeTakeFirstOrThrow();
      // The event is written with the version: it exists if and only if the version does.
      await enqueue(
        trx,
        contractEvent(
          DocumentUploadedSchema,
          {
            documentId: id,
            version: version.version,
            sha256: version.sha256,
            sizeBytes: BigInt(version.size_bytes),
            mimeType: version.mime_type,
            needsOcr: version.needs_ocr,
            uploadedBy: version.uploaded_by,
            uploadTime: timestampFromDate(new Date(version.created_at)),
          },
          { source: "/medmesh/documents", key: id },
        ),
      );
      await trx
        .updateTable("document")
        .set({
          version: version.version,
          size_bytes: v.size_bytes,
          mime_type: v.mime_type,
          processing_status: "uploaded",
          updated_at: sql`now()` as never,
        })
        .where("id", "=", id)
        .execute();
      await store.recordStatus(id, version.version, "uploaded");
      const result = { document: (await store.findLive(id))!, version };
      await within?.(trx, result);
      return result;
    });
    if (saved) this.onStatusChange?.(saved.document.id);
    return saved;
  }

  /** Whether any version keeps this content (blobs are shared by identical uploads). */
  async blobInUse(sha256: string): Promise<boolean> {
    return (
      (await this.db
        .selectFrom("document_version")
        .select("version")
        .where("sha256", "=", sha256)
        .limit(1)
        .executeTakeFirst()) !== undefined
    );
  }

  async versions(documentId: string): Promise<VersionRow[]> {
    return this.db
      .selectFrom("document_version")
      .selectAll()
      .where("document_id", "=", documentId)
      .orderBy("version", "desc")
      .execute();
  }

  async version(documentId: string, version: number): Promise<VersionRow | undefined> {
    return this.db
      .selectFrom("document_version")
      .selectAll()
      .where("document_id", "=", documentId)
      .where("version", "=", version)
      .executeTakeFirst();
  }

  async softDelete(id: string): Promise<boolean> {
    const res = await this.db
      .updateTable("document")
      .set({ deleted_at: sql`now()` as never, updated_at: sql`now()` as never })
      .where("id", "=", id)
      .where("deleted_at", "is", null)
      .executeTakeFirst();
    return Number(res.numUpdatedRows) > 0;
  }
}
