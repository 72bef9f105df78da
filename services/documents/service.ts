import { randomUUID } from "node:crypto";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { DocumentService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { Role } from "../../gen/medmesh/access/v1/access_pb.js";
import { isUniqueViolation } from "../../platform/db/errors.js";
import { callerOf } from "../../platform/grpc/caller.js";
import { invalidArgument } from "../../platform/grpc/errors.js";
import { decodePageToken, encodePageToken } from "../../platform/grpc/page-token.js";
import { checkDates, DocumentAccess, isAdmin, notFound } from "./access.js";
import { documentTypes, editableFields, statuses, toColumns, toDocument, toVersion } from "./model.js";
import { uploadStreamSlots, watchSlots } from "./caller-limits.js";
import type { OutcomeStore } from "./outcome-store.js";
import { resumableUploadHandlers, type ResumableUploadOptions } from "./resumable-upload.js";
import type { StatusFeed } from "./status-feed.js";
import { statusHandlers } from "./status.js";
import type { DocumentStore, ListFilter } from "./store.js";
import type { DocumentChanges, NewDocument } from "./tables.js";
import { discardUnlessUsed, receiveUpload, unlessCancelled, type ContentOptions } from "./upload.js";

const DEFAULT_PAGE_SIZE = 25;

export interface DocumentServiceDeps {
  store: DocumentStore;
  outcomes: OutcomeStore;
  /** Wakes this replica's WatchDocument calls. */
  feed: StatusFeed;
  content: ContentOptions;
  /** Resumable (browser) uploads. */
  resumable: ResumableUploadOptions;
  /** Long-lived calls one user may hold in this process at once. */
  perUser: { watches: number; uploadStreams: number };
  /** WatchDocument goes on past PROCESSED until INDEXED (search runs in this mesh). */
  watchUntilIndexed?: boolean;
}

const READ_CHUNK_BYTES = 64 * 1024;

/** DocumentService, the public face of documents; its upload and status handlers live beside it. */
export function documentService(deps: DocumentServiceDeps): ServiceImpl<typeof DocumentService> {
  const { store, content } = deps;
  const access = new DocumentAccess(store);
  const { visible, changeable } = { visible: access.visible.bind(access), changeable: access.changeable.bind(access) };
  const ensureDoiFree = access.ensureDoiFree.bind(access);
  const uploadStreams = uploadStreamSlots(deps.perUser.uploadStreams);

  return {
    ...resumableUploadHandlers(store, access, content, deps.resumable),
    ...statusHandlers(
      store,
      access,
      deps.outcomes,
      deps.feed,
      watchSlots(deps.perUser.watches),
      deps.watchUntilIndexed,
    ),

    async createDocument(req, ctx) {
      const doc = req.document!;
      const fields = toColumns(doc);
      if (fields.title === "")
        throw invalidArgument([{ field: "document.title", description: "title must not be blank" }]);
      checkDates([["document.publication_date", doc.publicationDate]]);
      await ensureDoiFree(fields.doi);
      try {
        const row = await store.insert({ id: randomUUID(), uploaded_by: callerOf(ctx).subject, ...fields });
        return { document: toDocument(row) };
      } catch (err) {
        // Two creates racing for one DOI: the unique index decides, the loser hears why.
        throw doiTakenOr(err, fields.doi);
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
        document_type: req.documentType ? documentTypes.name(req.documentType) : undefined,
        processing_status: req.processingStatus ? statuses.name(req.processingStatus) : undefined,
        uploaded_by: req.uploadedBy || undefined,
        published_after: req.publishedAfter || undefined,
        published_before: req.publishedBefore || undefined,
      };
      // Part of the filter, so a page token cannot be replayed by someone who sees less.
      // Mesh services (search rebuilding its index) list every document, as they read every one.
      filter.visible_to = isAdmin(caller) || caller.role === Role.SERVICE ? undefined : caller.subject;
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
      if (paths.length === 0)
        throw invalidArgument([{ field: "update_mask", description: "name at least one field to change" }]);
      const unknown = paths.filter((p) => !editableFields.has(p));
      if (unknown.length) {
        throw invalidArgument(
          unknown.map((p) => ({
            field: "update_mask",
            description: `${p} is not a field you can change (allowed: ${[...editableFields].join(", ")})`,
          })),
        );
      }
      const all = toColumns(doc);
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
        content.onEvent?.();
        // Watchers here re-check at once whether their callers may still see it (visibility).
        deps.feed.notify(doc.id);
        return { document: toDocument(row) };
      } catch (err) {
        throw doiTakenOr(err, changes.doi);
      }
    },

    async upload(requests, ctx) {
      const caller = callerOf(ctx);
      // Released however the stream ends; the slot bounds what one user's streams hold here.
      const release = uploadStreams.take(caller.subject);
      try {
        let target: { id: string } | { create: NewDocument } | undefined;
        const file = await receiveUpload(requests, content.blobs, {
          maxBytes: content.maxUploadBytes,
          signal: ctx.signal,
          discard: (blob) => discardUnlessUsed(store, content.blobs, blob),
          authorize: async (header) => {
            target = await access.uploadTarget(header, caller);
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
        let saved;
        try {
          // A new document is one statement; a new version of an existing one locks the document
          // first, for its version number. Either way a cancelled call writes nothing.
          saved =
            "create" in target!
              ? await store.createWithFirstVersion(target.create, version, () => unlessCancelled(ctx.signal))
              : await store.addVersion(target!, version, async () => unlessCancelled(ctx.signal));
        } catch (err) {
          // Rolled back: the blob belongs to no version unless identical content does.
          if (ctx.signal.aborted) await discardUnlessUsed(store, content.blobs, file.blob);
          throw err;
        }
        if (!saved) throw notFound(file.header.documentId);
        content.onEvent?.();
        return { document: toDocument(saved.document), version: toVersion(saved.version) };
      } finally {
        release();
      }
    },

    async *readContent(req, ctx) {
      // The document and the version in one look: the worker reads every version it processes.
      const found = await store.findLiveWithVersion(req.documentId, req.version);
      if (!found || !access.sees(callerOf(ctx), found)) throw notFound(req.documentId);
      const wanted = req.version || found.version;
      if (wanted === 0)
        throw new ConnectError(`document ${req.documentId} has no content yet`, Code.FailedPrecondition);
      if (found.sha256 === null)
        throw new ConnectError(`document ${req.documentId} has no version ${wanted}`, Code.NotFound);
      const stream = await content.blobs.get(found.sha256, { signal: ctx.signal });
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
      content.onEvent?.();
      deps.feed.notify(req.id);
      return {};
    },
  };
}

/** DOIs are unique among live documents: two writes racing for one DOI meet at the unique index. */
function doiTakenOr(err: unknown, doi: string | null | undefined): unknown {
  return isUniqueViolation(err)
    ? new ConnectError(`a document with DOI ${doi} already exists`, Code.AlreadyExists)
    : err;
}
