import { sql, type Kysely } from "kysely";
import { queryShape } from "../../platform/db/query-shape.js";
import { outboxRow } from "../../platform/events/index.js";
import { enqueueDeleted, enqueueUpdated, enqueueUploaded, uploadedEvent } from "./events.js";
import type { StatusWriter } from "./status-writer.js";
import {
  documentColumns,
  type DocumentChanges,
  type DocumentRow,
  type DocumentsDB,
  type NewDocument,
  type NewVersion,
  type StatusRow,
  type VersionRow,
} from "./tables.js";

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

export interface SavedVersion {
  document: DocumentRow;
  version: VersionRow;
}

/** Locks the live document's row for the rest of the transaction; undefined if there is none. */
export function lockLiveDocument(trx: Kysely<DocumentsDB>, id: string) {
  return trx
    .selectFrom("document")
    .select(["version", "processing_status"])
    .where("id", "=", id)
    .where("deleted_at", "is", null)
    .forUpdate()
    .executeTakeFirst();
}

/**
 * Inserts the document with its first history entry (pending) in one statement. No status write
 * is needed besides: the column's default is pending, and nobody can be watching a document that
 * is not committed yet.
 */
async function insertDocument(trx: Kysely<DocumentsDB>, doc: NewDocument): Promise<DocumentRow> {
  return trx
    .with("created", (q) =>
      q
        .insertInto("document")
        .values({ ...doc, authors: JSON.stringify(doc.authors), metadata: JSON.stringify(doc.metadata) })
        .returning(documentColumns),
    )
    .with("history", (q) =>
      q
        .insertInto("document_status")
        .values({ document_id: doc.id, version: 0, status: "pending", failure_reason: null, failure_message: null })
        .returning("seq"),
    )
    .selectFrom("created")
    .selectAll()
    .executeTakeFirstOrThrow() as Promise<DocumentRow>;
}

// The columns the one-statement create binds, in order. `satisfies` holds each list to exactly the
// columns its row type has, so a column added later cannot be left out of the statement.
const newDocumentColumns = Object.keys({
  id: 1,
  title: 1,
  authors: 1,
  journal: 1,
  publication_date: 1,
  doi: 1,
  pmid: 1,
  document_type: 1,
  specialty: 1,
  uploaded_by: 1,
  visibility: 1,
  metadata: 1,
} satisfies Record<keyof NewDocument, 1>) as (keyof NewDocument)[];
const newVersionColumns = Object.keys({
  sha256: 1,
  size_bytes: 1,
  mime_type: 1,
  needs_ocr: 1,
  filename: 1,
  uploaded_by: 1,
} satisfies Record<keyof NewVersion, 1>) as (keyof NewVersion)[];
const outboxColumns = ["id", "topic", "key", "type", "source", "payload", "headers", "created_at"] as const;
const versionColumns = Object.keys({
  document_id: 1,
  version: 1,
  sha256: 1,
  size_bytes: 1,
  mime_type: 1,
  needs_ocr: 1,
  filename: 1,
  uploaded_by: 1,
  created_at: 1,
  started_at: 1,
  redriven_at: 1,
  redrives: 1,
  stalled_redrives: 1,
} satisfies Record<keyof VersionRow, 1>) as (keyof VersionRow)[];

/** The documents, their versions and their status history; the schema is already scoped by openDatabase. */
export class DocumentStore {
  /** Every read of one document (each GetDocument, each access check) runs this statement. */
  private readonly liveById = queryShape(
    () => this.db,
    1,
    (db: Kysely<DocumentsDB>, id: string) =>
      db.selectFrom("document").select(documentColumns).where("id", "=", id).where("deleted_at", "is", null),
  );

  /**
   * The live document with one of its versions (version 0: the current one), in one round trip:
   * ReadContent needs both for every version the worker reads.
   */
  private readonly liveWithVersion = queryShape(
    () => this.db,
    2,
    (db: Kysely<DocumentsDB>, id: string, version: number) =>
      db
        .selectFrom("document as d")
        .leftJoin("document_version as v", (j) =>
          j
            .onRef("v.document_id", "=", "d.id")
            .on("v.version", "=", sql<number>`coalesce(nullif(cast(${version} as integer), 0), d.version)`),
        )
        .select(["d.version", "d.visibility", "d.uploaded_by", "v.sha256"])
        .where("d.id", "=", id)
        .where("d.deleted_at", "is", null),
  );

  /**
   * A new document with its first version in one statement, with no transaction around it (BEGIN
   * and COMMIT would be two more round trips on every upload of a new document): the document row
   * already at uploaded and version 1, its history (pending, then uploaded), the version and its
   * DocumentUploaded event. The version's time is this process's clock, so the event written in
   * the same statement can carry it.
   */
  private readonly createShape = queryShape(
    () => this.db,
    newDocumentColumns.length + newVersionColumns.length + 1 + outboxColumns.length,
    (db: Kysely<any>, ...args: unknown[]) => {
      let i = 0;
      const doc = Object.fromEntries(newDocumentColumns.map((c) => [c, args[i++]]));
      const version = Object.fromEntries(newVersionColumns.map((c) => [c, args[i++]]));
      const at = args[i++];
      const event = Object.fromEntries(outboxColumns.map((c) => [c, args[i++]]));
      const status = (v: number, s: string) => ({
        document_id: doc.id,
        version: v,
        status: s,
        failure_reason: null,
        failure_message: null,
      });
      return db
        .with("created", (q) =>
          q
            .insertInto("document")
            .values({
              ...doc,
              processing_status: "uploaded",
              version: 1,
              size_bytes: version.size_bytes,
              mime_type: version.mime_type,
              created_at: at,
              updated_at: at,
            })
            .returning(documentColumns),
        )
        .with("added", (q) =>
          q
            .insertInto("document_version")
            .values({ ...version, document_id: doc.id, version: 1, created_at: at })
            .returningAll(),
        )
        .with("history", (q) => q.insertInto("document_status").values([status(0, "pending"), status(1, "uploaded")]))
        .with("queued", (q) => q.insertInto("outbox").values(event))
        .selectFrom(["created", "added"])
        .selectAll("created")
        .select(versionColumns.map((c) => `added.${c} as v_${c}`));
    },
  );

  constructor(
    private readonly db: Kysely<DocumentsDB>,
    private readonly status: StatusWriter,
  ) {}

  /**
   * Creates a document with its first version, the version's DocumentUploaded event and the move
   * to uploaded, in one statement (see createShape). `beforeWrite` runs last before it is sent;
   * throwing there writes nothing.
   */
  async createWithFirstVersion(doc: NewDocument, v: NewVersion, beforeWrite?: () => void): Promise<SavedVersion> {
    const at = new Date();
    const first = { ...v, document_id: doc.id, version: 1, created_at: at };
    const { row: event } = outboxRow(uploadedEvent(first));
    const values: Record<string, unknown> = {
      ...doc,
      authors: JSON.stringify(doc.authors),
      metadata: JSON.stringify(doc.metadata),
    };
    const args = [
      ...newDocumentColumns.map((c) => values[c]),
      ...newVersionColumns.map((c) => v[c]),
      at,
      ...outboxColumns.map((c) => event[c]),
    ];
    beforeWrite?.();
    const row = (await this.createShape.first(this.db, ...args)) as Record<string, unknown> | undefined;
    if (!row) throw new Error(`document ${doc.id} was not created`);
    const version: Record<string, unknown> = {};
    const document: Record<string, unknown> = {};
    for (const [k, value] of Object.entries(row)) {
      if (k.startsWith("v_")) version[k.slice(2)] = value;
      else document[k] = value;
    }
    this.status.committed(doc.id);
    return { document: document as unknown as DocumentRow, version: version as unknown as VersionRow };
  }

  async insert(doc: NewDocument): Promise<DocumentRow> {
    return this.status.transaction((trx) => insertDocument(trx, doc));
  }

  /** The live document's current version, who may see it, and the blob of `version` (0: the current one), if it has that version. */
  async findLiveWithVersion(
    id: string,
    version: number,
  ): Promise<{ version: number; visibility: string; uploaded_by: string; sha256: string | null } | undefined> {
    return this.liveWithVersion.first(this.db, id, version);
  }

  async findLive(id: string, db: Kysely<DocumentsDB> = this.db): Promise<DocumentRow | undefined> {
    return this.liveById.first(db, id);
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
    let q = this.db.selectFrom("document").select(documentColumns).where("deleted_at", "is", null);
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
    return q.orderBy("seq", "desc").limit(limit).execute();
  }

  /** Changes the metadata and queues DocumentUpdated with it (search copies what changed). */
  async update(id: string, changes: DocumentChanges): Promise<DocumentRow | undefined> {
    const { authors, metadata, ...rest } = changes;
    return this.db.transaction().execute(async (trx) => {
      const row = await trx
        .updateTable("document")
        .set({
          ...rest,
          ...(authors && { authors: JSON.stringify(authors) }),
          ...(metadata && { metadata: JSON.stringify(metadata) }),
          updated_at: sql<Date>`now()`,
        })
        .where("id", "=", id)
        .where("deleted_at", "is", null)
        .returning(documentColumns)
        .executeTakeFirst();
      if (row) await enqueueUpdated(trx, row, Object.keys(changes));
      return row;
    });
  }

  /**
   * Records a new content version, its DocumentUploaded event and the document's move to
   * uploaded, and the document itself first when `create` is given, in one transaction. The
   * version number comes from the locked document row, so two uploads racing on one document get
   * consecutive numbers.
   */
  async addVersion(
    target: { id: string } | { create: NewDocument },
    v: NewVersion,
    /** Runs in the same transaction once the version is written; throwing undoes the version. */
    within?: (trx: Kysely<DocumentsDB>, saved: SavedVersion) => Promise<void>,
  ): Promise<SavedVersion | undefined> {
    return this.status.transaction(async (trx, setStatus) => {
      let id: string;
      let current: number;
      if ("create" in target) {
        // Inserted by this transaction, so already locked by it, and without versions.
        id = (await insertDocument(trx, target.create)).id;
        current = 0;
      } else {
        const locked = await lockLiveDocument(trx, target.id);
        if (!locked) return undefined;
        id = target.id;
        current = locked.version;
      }
      const version = await trx
        .insertInto("document_version")
        .values({ ...v, document_id: id, version: current + 1 })
        .returningAll()
        .executeTakeFirstOrThrow();
      // The event is written with the version: it exists if and only if the version does.
      await enqueueUploaded(trx, version);
      const document = await setStatus(
        { documentId: id, version: version.version, status: "uploaded" },
        { version: version.version, size_bytes: v.size_bytes, mime_type: v.mime_type },
      );
      const saved = { document, version };
      await within?.(trx, saved);
      return saved;
    });
  }

  /** Whether any version keeps this content (blobs are shared by identical uploads). */
  async blobInUse(sha256: string): Promise<boolean> {
    const row = await this.db
      .selectFrom("document_version")
      .select("version")
      .where("sha256", "=", sha256)
      .limit(1)
      .executeTakeFirst();
    return row !== undefined;
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

  /** Marks the document deleted and queues DocumentDeleted with it (search drops its row). */
  async softDelete(id: string): Promise<boolean> {
    return this.db.transaction().execute(async (trx) => {
      const res = await trx
        .updateTable("document")
        .set({ deleted_at: sql<Date>`now()`, updated_at: sql<Date>`now()` })
        .where("id", "=", id)
        .where("deleted_at", "is", null)
        .executeTakeFirst();
      const deleted = Number(res.numUpdatedRows) > 0;
      if (deleted) await enqueueDeleted(trx, id);
      return deleted;
    });
  }

  async latestStatus(documentId: string): Promise<StatusRow | undefined> {
    return this.db
      .selectFrom("document_status")
      .selectAll()
      .where("document_id", "=", documentId)
      .orderBy("seq", "desc")
      .limit(1)
      .executeTakeFirst();
  }
}
