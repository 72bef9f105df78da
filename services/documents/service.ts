import { randomUUID } from "node:crypto";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { DocumentSchema, DocumentService, Visibility, type Document } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { invalidArgument, type FieldViolation } from "../../platform/grpc/errors.js";
import { principalKey, type Principal } from "../../platform/grpc/interceptors/access.js";
import { Role } from "../../gen/medmesh/access/v1/access_pb.js";
import { decodePageToken, encodePageToken } from "../../platform/grpc/page-token.js";
import { documentTypes, isCalendarDate, statuses, toDocument, toVersion, visibilities } from "./model.js";
import { receiveUpload } from "./upload.js";
import type { BlobStore } from "../../platform/blobs/index.js";
import { check } from "../../platform/grpc/interceptors/validation.js";
import type { DocumentChanges, DocumentRow, DocumentStore, ListFilter, NewDocument } from "./store.js";

const DEFAULT_PAGE_SIZE = 25;

/** Fields a caller may change through UpdateDocument; everything else is the platform's. */
const updatable = new Set([
  "title",
  "authors",
  "journal",
  "publication_date",
  "doi",
  "pmid",
  "document_type",
  "specialty",
  "visibility",
  "metadata",
]);

/**
 * Who is calling. The access interceptor has already admitted the caller by the contract's
 * policy; every documents RPC requires a signed-in principal, so its absence is a wiring error.
 */
function callerOf(ctx: HandlerContext): Principal {
  const p = ctx.values.get(principalKey);
  if (!p) throw new ConnectError("sign in to call this method", Code.Unauthenticated);
  return p;
}

const isAdmin = (p: Principal) => p.role === Role.ADMIN;

/** Platform documents are for every signed-in user; private ones for their uploader and admins. */
function canSee(p: Principal, row: DocumentRow): boolean {
  return row.visibility === "platform" || row.uploaded_by === p.subject || isAdmin(p);
}

function canChange(p: Principal, row: DocumentRow): boolean {
  return row.uploaded_by === p.subject || isAdmin(p);
}

function notFound(id: string): ConnectError {
  return new ConnectError(`document ${id} does not exist`, Code.NotFound);
}

function checkDates(fields: Array<[string, string]>): void {
  const bad: FieldViolation[] = fields
    .filter(([, v]) => v !== "" && !isCalendarDate(v))
    .map(([field, v]) => ({ field, description: `${v} is not a date in the calendar` }));
  if (bad.length) throw invalidArgument(bad);
}

function normalised(doc: Document) {
  return {
    title: doc.title.trim(),
    authors: doc.authors.map((a) => a.trim()),
    journal: doc.journal.trim() || null,
    publication_date: doc.publicationDate || null,
    doi: doc.doi || null,
    pmid: doc.pmid || null,
    document_type: doc.documentType ? documentTypes.toName(doc.documentType) : "other",
    specialty: doc.specialty.trim() || null,
    visibility: visibilities.toName(doc.visibility || Visibility.PRIVATE),
    metadata: doc.metadata,
  };
}

export interface ContentOptions {
  blobs: BlobStore;
  /** Largest file an upload may carry. */
  maxUploadBytes: number;
  /** Told when a committed change left an event in the outbox, so the relay need not wait to poll. */
  onEvent?: () => void;
}

const READ_CHUNK_BYTES = 64 * 1024;

export function documentService(store: DocumentStore, content: ContentOptions): ServiceImpl<typeof DocumentService> {
  async function ensureDoiFree(doi: string | null, exceptId?: string) {
    if (!doi) return;
    if (await store.findLiveByDoi(doi, exceptId)) {
      throw new ConnectError(`a document with DOI ${doi} already exists`, Code.AlreadyExists);
    }
  }

  /**
   * The live document if the caller may see it. A private document of someone else is reported
   * exactly like a missing one, so ids cannot be probed for existence.
   */
  async function visible(id: string, caller: Principal): Promise<DocumentRow> {
    const row = await store.findLive(id);
    if (!row || !canSee(caller, row)) throw notFound(id);
    return row;
  }

  async function changeable(id: string, caller: Principal): Promise<DocumentRow> {
    const row = await visible(id, caller);
    if (!canChange(caller, row)) {
      throw new ConnectError("only the uploader or an admin may change this document", Code.PermissionDenied);
    }
    return row;
  }

  return {
    async createDocument(req, ctx) {
      const doc = req.document!;
      const fields = normalised(doc);
      if (fields.title === "") throw invalidArgument([{ field: "document.title", description: "title must not be blank" }]);
      checkDates([["document.publication_date", doc.publicationDate]]);
      await ensureDoiFree(fields.doi);
      try {
        const row = await store.insert({ id: randomUUID(), uploaded_by: callerOf(ctx).subject, ...fields });
        return { document: toDocument(row) };
      } catch (err) {
        // Two creates racing for one DOI: the unique index decides, the loser hears why.
        if ((err as { code?: string }).code === "23505") throw new ConnectError(`a document with DOI ${fields.doi} already exists`, Code.AlreadyExists);
        throw err;
      }
    },

    async getDocument(req, ctx) {
      return { document: toDocument(await visible(req.id, callerOf(ctx))) };
    },

    async listDocuments(req, ctx) {
      const caller = callerOf(ctx);
      checkDates([
        ["published_after", req.publishedAfter],
        ["published_before", req.publishedBefore],
      ]);
      if (req.publishedAfter && req.publishedBefore && req.publishedAfter > req.publishedBefore) {
        throw invalidArgument([{ field: "published_after", description: "must not be later than published_before" }]);
      }
      const filter: ListFilter = {
        specialty: req.specialty || undefined,
        document_type: req.documentType ? documentTypes.toName(req.documentType) : undefined,
        processing_status: req.processingStatus ? statuses.toName(req.processingStatus) : undefined,
        uploaded_by: req.uploadedBy || undefined,
        published_after: req.publishedAfter || undefined,
        published_before: req.publishedBefore || undefined,
      };
      // Part of the filter, so a page token cannot be replayed by someone who sees less.
      filter.visible_to = isAdmin(caller) ? undefined : caller.subject;
      const after = decodePageToken(req.pageToken, filter);
      const size = req.pageSize || DEFAULT_PAGE_SIZE;
      // One extra row tells whether another page exists without a count query.
      const rows = await store.list(filter, size + 1, after);
      const page = rows.slice(0, size);
      const more = rows.length > size;
      return {
        documents: page.map(toDocument),
        nextPageToken: more ? encodePageToken(page[page.length - 1]!.seq, filter) : "",
      };
    },

    async updateDocument(req, ctx) {
      const doc = req.document!;
      const paths = req.updateMask!.paths;
      if (paths.length === 0) throw invalidArgument([{ field: "update_mask", description: "name at least one field to change" }]);
      const unknown = paths.filter((p) => !updatable.has(p));
      if (unknown.length) {
        throw invalidArgument(
          unknown.map((p) => ({ field: "update_mask", description: `${p} is not a field you can change (allowed: ${[...updatable].join(", ")})` })),
        );
      }
      const all = normalised(doc);
      const changes: DocumentChanges = {};
      for (const p of new Set(paths)) (changes as Record<string, unknown>)[p] = all[p as keyof typeof all];
      if ("title" in changes && changes.title === "") {
        throw invalidArgument([{ field: "document.title", description: "title must not be blank" }]);
      }
      if ("publication_date" in changes) checkDates([["document.publication_date", doc.publicationDate]]);
      await changeable(doc.id, callerOf(ctx));
      if (changes.doi) await ensureDoiFree(changes.doi, doc.id);
      try {
        const row = await store.update(doc.id, changes);
        if (!row) throw notFound(doc.id);
        return { document: toDocument(row) };
      } catch (err) {
        if ((err as { code?: string }).code === "23505") throw new ConnectError(`a document with DOI ${changes.doi} already exists`, Code.AlreadyExists);
        throw err;
      }
    },

    async upload(requests, ctx) {
      const caller = callerOf(ctx);
      let create: NewDocument | undefined;
      const file = await receiveUpload(requests, content.blobs, {
        maxBytes: content.maxUploadBytes,
        signal: ctx.signal,
        discard: async (blob) => {
          if (!(await store.blobInUse(blob.sha256))) await content.blobs.delete(blob.key);
        },
        authorize: async (header) => {
          if (header.documentId) {
            await changeable(header.documentId, caller);
            return;
          }
          const doc = header.document;
          if (!doc) throw invalidArgument([{ field: "header.document", description: "name a document_id, or describe the new document" }]);
          const fields = normalised(doc);
          if (fields.title === "") throw invalidArgument([{ field: "header.document.title", description: "title must not be blank" }]);
          if (!doc.documentType) throw invalidArgument([{ field: "header.document.document_type", description: "document_type is required" }]);
          check(DocumentSchema, doc);
          checkDates([["header.document.publication_date", doc.publicationDate]]);
          await ensureDoiFree(fields.doi);
          create = { id: randomUUID(), uploaded_by: caller.subject, ...fields };
        },
      });
      const version = {
        sha256: file.blob.sha256,
        size_bytes: file.blob.size,
        mime_type: file.type.mime,
        needs_ocr: file.type.needsOcr,
        filename: file.header.filename,
        uploaded_by: caller.subject,
      };
      const saved = await store.addVersion(create ? { create } : { id: file.header.documentId }, version);
      if (!saved) throw notFound(file.header.documentId);
      content.onEvent?.();
      return { document: toDocument(saved.document), version: toVersion(saved.version) };
    },

    async *readContent(req, ctx) {
      const row = await visible(req.documentId, callerOf(ctx));
      const wanted = req.version || row.version;
      if (wanted === 0) throw new ConnectError(`document ${req.documentId} has no content yet`, Code.FailedPrecondition);
      const version = await store.version(req.documentId, wanted);
      if (!version) throw new ConnectError(`document ${req.documentId} has no version ${wanted}`, Code.NotFound);
      const stream = await content.blobs.get(version.sha256, { signal: ctx.signal });
      let pending: Buffer = Buffer.alloc(0);
      for await (const piece of stream as AsyncIterable<Buffer>) {
        pending = pending.length ? Buffer.concat([pending, piece]) : piece;
        while (pending.length >= READ_CHUNK_BYTES) {
          yield { chunk: pending.subarray(0, READ_CHUNK_BYTES) };
          pending = pending.subarray(READ_CHUNK_BYTES);
        }
      }
      if (pending.length) yield { chunk: pending };
    },

    async listVersions(req, ctx) {
      await visible(req.documentId, callerOf(ctx));
      return { versions: (await store.versions(req.documentId)).map(toVersion) };
    },

    async deleteDocument(req, ctx) {
      await changeable(req.id, callerOf(ctx));
      if (!(await store.softDelete(req.id))) throw notFound(req.id);
      return {};
    },
  };
}
