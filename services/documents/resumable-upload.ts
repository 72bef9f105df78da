import { randomUUID } from "node:crypto";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { DocumentService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import {
  BlobIntegrityError,
  BlobTooLargeError,
  detectContentType,
  SNIFF_BYTES,
  type BlobRef,
} from "../../platform/blobs/index.js";
import { isUniqueViolation } from "../../platform/db/errors.js";
import { callerOf } from "../../platform/grpc/caller.js";
import type { Principal } from "../../platform/grpc/interceptors/access.js";
import { SerialQueue } from "../../platform/lifecycle/serial-queue.js";
import { logger } from "../../platform/telemetry/logger.js";
import { notFound, type DocumentAccess } from "./access.js";
import { quotaExceeded } from "./caller-limits.js";
import { toDocument, toSession, toVersion } from "./model.js";
import type { DocumentStore, SavedVersion } from "./store.js";
import type { NewDocument } from "./tables.js";
import { bytesText, contradicts, discardUnlessUsed, type ContentOptions } from "./upload.js";
import type { OpenUploads, UploadSessionRow, UploadSessionStore } from "./upload-sessions.js";
import { isMissing, type UploadStaging } from "./upload-staging.js";

export interface ResumableUploadOptions {
  sessions: UploadSessionStore;
  staging: UploadStaging;
  /** How long an upload may sit untouched before it expires. */
  sessionTtlMs: number;
  /** What one user's open uploads may add up to, on every replica together. */
  perUser: { sessions: number; bytes: number };
}

type Handlers = Pick<
  ServiceImpl<typeof DocumentService>,
  "startUpload" | "uploadPart" | "getUploadStatus" | "completeUpload" | "abortUpload"
>;

function fail(code: Code, message: string): ConnectError {
  return new ConnectError(message, code);
}

const uploadNotFound = (id: string) => fail(Code.NotFound, `upload ${id} does not exist`);

/** The refusal of a StartUpload that would pass one of the caller's limits on open uploads. */
function tooManyOpen(
  subject: string,
  open: OpenUploads,
  size: number,
  limits: ResumableUploadOptions["perUser"],
): ConnectError {
  const what = "complete or abort one of them (or let it expire) before starting another";
  if (open.count >= limits.sessions) {
    return quotaExceeded(
      `you already have ${open.count} uploads open, the most one user may have at once; ${what}`,
      subject,
      `open resumable uploads per user: ${limits.sessions}`,
    );
  }
  const already = open.count > 0 ? `your open uploads already announce ${bytesText(open.bytes)}, and ` : "";
  return quotaExceeded(
    `${already}this file's ${bytesText(size)} would take them past the ${bytesText(limits.bytes)} one user may have open at once; ${open.count > 0 ? what : "upload a smaller file"}`,
    subject,
    `bytes announced by open resumable uploads per user: ${limits.bytes}`,
  );
}

/** Thrown inside the completing transaction when the session is no longer open, to undo the version. */
class SessionMoved extends Error {}

/** StartUpload, UploadPart, GetUploadStatus, CompleteUpload and AbortUpload. */
export function resumableUploadHandlers(
  store: DocumentStore,
  access: DocumentAccess,
  content: ContentOptions,
  resumable: ResumableUploadOptions,
): Handlers {
  const { sessions, staging, sessionTtlMs: ttl } = resumable;
  // Parts of one upload are written and counted one after another within this process; the
  // database's conditional updates are what keep several replicas honest.
  const queue = new SerialQueue();

  /**
   * The caller's live session. Someone else's upload is reported exactly like a missing one, so
   * upload ids cannot be probed; an expired one is gone as far as callers are concerned, even
   * before the sweeper has removed it.
   */
  async function owned(id: string, caller: Principal): Promise<UploadSessionRow> {
    const row = await sessions.find(id);
    if (!row || row.owner !== caller.subject) throw uploadNotFound(id);
    if (row.expired) throw fail(Code.NotFound, `upload ${id} has expired; start the upload again`);
    return row;
  }

  /** The staging file is missing or short: say so, unless the session itself went away meanwhile. */
  async function lost(id: string, caller: Principal): Promise<ConnectError> {
    try {
      await owned(id, caller);
    } catch (err) {
      return err as ConnectError;
    }
    logger.error("the staging file of an upload is missing or short", { upload_id: id });
    return fail(
      Code.DataLoss,
      `the bytes received so far for upload ${id} are no longer on the server; abort it and upload the file again`,
    );
  }

  const discard = (blob: BlobRef) => discardUnlessUsed(store, content.blobs, blob);

  async function endSession(id: string): Promise<void> {
    await sessions.remove(id);
    await staging.remove(id);
  }

  async function completedAnswer(row: UploadSessionRow, sha256: string, caller: Principal) {
    if (row.sha256 !== sha256) {
      throw fail(
        Code.FailedPrecondition,
        `upload ${row.id} was already completed with SHA-256 ${row.sha256}, not ${sha256}`,
      );
    }
    const document = await access.visible(row.document_id!, caller);
    const version = await store.version(row.document_id!, row.version!);
    if (!version) throw notFound(row.document_id!);
    return { document: toDocument(document), version: toVersion(version), upload: toSession(row) };
  }

  /**
   * The type from the first bytes, once the part at `offset` completes them; undefined while they
   * are still incomplete. An unacceptable file cannot become acceptable by sending more, so the
   * upload ends there.
   */
  async function sniff(row: UploadSessionRow, offset: number, data: Uint8Array, caller: Principal) {
    const sniffLength = Math.min(SNIFF_BYTES, row.size_bytes);
    if (row.mime_type !== null || offset + data.length < sniffLength) return undefined;
    let earlier: Buffer;
    try {
      earlier = await staging.readHead(row.id, offset);
    } catch (err) {
      if (isMissing(err)) throw await lost(row.id, caller);
      throw err;
    }
    if (earlier.length < offset) throw await lost(row.id, caller);
    const type = detectContentType(Buffer.concat([earlier, data]).subarray(0, sniffLength));
    if (type.kind === "unknown") {
      await endSession(row.id);
      throw fail(Code.InvalidArgument, `this file cannot be accepted: ${type.reason ?? "its type is not supported"}`);
    }
    if (contradicts(row.declared_mime_type, type)) {
      await endSession(row.id);
      throw fail(
        Code.InvalidArgument,
        `the file was declared as ${row.declared_mime_type} but its content is ${type.mime}`,
      );
    }
    return { mime_type: type.mime, needs_ocr: type.needsOcr };
  }

  /** The staged bytes into the blob store, their digest checked on the way. */
  async function storeStaged(row: UploadSessionRow, sha256: string, caller: Principal): Promise<BlobRef> {
    let blob: BlobRef;
    try {
      // The client's cancel does not stop this: a retry then finds the work done.
      blob = await content.blobs.put(staging.read(row.id, row.size_bytes), {
        maxBytes: content.maxUploadBytes,
        expectedSha256: sha256,
      });
    } catch (err) {
      if (err instanceof BlobIntegrityError) {
        // The session stays open: a client that hashed the wrong thing may complete again;
        // one whose bytes were damaged on the way aborts and starts over.
        throw fail(
          Code.InvalidArgument,
          `the ${row.size_bytes} bytes received have SHA-256 ${err.actual}, not ${err.expected}; complete the upload again with the right digest, or abort it and upload the file again`,
        );
      }
      if (err instanceof BlobTooLargeError) {
        throw fail(
          Code.ResourceExhausted,
          `the file is more than the ${bytesText(content.maxUploadBytes)} an upload may carry`,
        );
      }
      if (isMissing(err)) throw await lost(row.id, caller);
      throw err;
    }
    if (blob.size !== row.size_bytes) {
      await discard(blob);
      throw await lost(row.id, caller);
    }
    return blob;
  }

  return {
    async startUpload(req, ctx) {
      const caller = callerOf(ctx);
      const header = req.header!;
      // The same rules as a streamed upload: who may add what is settled before any byte is sent.
      const target = await access.uploadTarget(header, caller, "header");
      const size = Number(req.sizeBytes);
      if (size > content.maxUploadBytes) {
        throw fail(
          Code.ResourceExhausted,
          `the file is ${size} bytes (${bytesText(size)}), more than the ${bytesText(content.maxUploadBytes)} an upload may carry`,
        );
      }
      const outcome = await sessions.createWithinLimits(
        {
          id: randomUUID(),
          owner: caller.subject,
          document_id: "id" in target ? target.id : null,
          new_document: "create" in target ? target.create : null,
          filename: header.filename,
          declared_mime_type: header.declaredMimeType,
          expected_sha256: header.sha256 || null,
          size_bytes: size,
        },
        ttl,
        resumable.perUser,
      );
      if ("refused" in outcome) throw tooManyOpen(caller.subject, outcome.refused, size, resumable.perUser);
      const row = outcome.created;
      // The row comes first: a staging file then always has a row while it matters, so one
      // without a row is safe to sweep at any time.
      try {
        await staging.create(row.id);
      } catch (err) {
        await sessions.remove(row.id);
        throw err;
      }
      return { upload: toSession(row) };
    },

    async uploadPart(req, ctx) {
      const caller = callerOf(ctx);
      const id = req.uploadId;
      return queue.run(id, async () => {
        if (ctx.signal.aborted) throw fail(Code.Canceled, "the call was cancelled");
        const row = await owned(id, caller);
        const offset = Number(req.offset);
        const end = offset + req.data.length;
        if (end > row.size_bytes) {
          throw fail(
            Code.InvalidArgument,
            `this part would end at byte ${end}, past the ${row.size_bytes} bytes announced for the file`,
          );
        }
        // A repeat of something already stored, typically a retry whose answer was lost.
        if (end <= row.next_offset) return { upload: toSession(row) };
        if (offset !== row.next_offset) {
          throw fail(
            Code.FailedPrecondition,
            `this part starts at byte ${offset}, but upload ${id} continues at byte ${row.next_offset}; send the bytes from ${row.next_offset} on`,
          );
        }
        const detected = await sniff(row, offset, req.data, caller);
        try {
          await staging.write(id, req.data, offset);
        } catch (err) {
          if (isMissing(err)) throw await lost(id, caller);
          throw err;
        }
        const advanced = await sessions.advance(id, offset, end, ttl, detected);
        if (advanced) return { upload: toSession(advanced) };
        // Someone else moved the session first (another replica, an abort, the sweeper).
        const now = await owned(id, caller);
        if (now.next_offset >= end) return { upload: toSession(now) };
        throw fail(
          Code.FailedPrecondition,
          `upload ${id} continues at byte ${now.next_offset}; send the bytes from ${now.next_offset} on`,
        );
      });
    },

    async getUploadStatus(req, ctx) {
      return { upload: toSession(await owned(req.uploadId, callerOf(ctx))) };
    },

    async completeUpload(req, ctx) {
      const caller = callerOf(ctx);
      const id = req.uploadId;
      // Two completions of one upload in this process take turns; the second finds it completed.
      return queue.run(id, async () => {
        const row = await owned(id, caller);
        if (row.state === "completed") return completedAnswer(row, req.sha256, caller);
        if (row.next_offset < row.size_bytes) {
          throw fail(
            Code.FailedPrecondition,
            `${row.size_bytes - row.next_offset} of the file's ${row.size_bytes} bytes are still missing; send them from byte ${row.next_offset} on, then complete the upload`,
          );
        }
        if (row.expected_sha256 && row.expected_sha256 !== req.sha256) {
          throw fail(
            Code.InvalidArgument,
            `the sha256 ${req.sha256} differs from ${row.expected_sha256}, given when the upload started`,
          );
        }
        // Checked again: the document may have been deleted, or the DOI taken, since the start.
        let target: { id: string } | { create: NewDocument };
        if (row.document_id) {
          await access.changeable(row.document_id, caller);
          target = { id: row.document_id };
        } else {
          await access.ensureDoiFree(row.new_document!.doi);
          target = { create: row.new_document! };
        }

        const blob = await storeStaged(row, req.sha256, caller);
        // Recorded by the part that completed the sniff window; next_offset cannot move past it otherwise.
        const version = {
          sha256: blob.sha256,
          size_bytes: blob.size,
          mime_type: row.mime_type!,
          needs_ocr: row.needs_ocr!,
          filename: row.filename,
          uploaded_by: caller.subject,
        };
        let completed: UploadSessionRow | undefined;
        let saved: SavedVersion | undefined;
        try {
          saved = await store.addVersion(target, version, async (trx, s) => {
            const done = { document_id: s.document.id, version: s.version.version, sha256: blob.sha256 };
            completed = await sessions.markCompleted(trx, id, done, ttl);
            if (!completed) throw new SessionMoved();
          });
        } catch (err) {
          await discard(blob);
          const unique = isUniqueViolation(err);
          if (err instanceof SessionMoved || unique) {
            // Another replica completed it first (racing on the same new document id ends in a
            // unique violation), or it was aborted meanwhile.
            const now = await sessions.find(id);
            if (now?.state === "completed" && now.owner === caller.subject)
              return completedAnswer(now, req.sha256, caller);
            if (!now || err instanceof SessionMoved) throw uploadNotFound(id);
            throw fail(Code.AlreadyExists, `a document with DOI ${row.new_document?.doi} already exists`);
          }
          throw err;
        }
        if (!saved) {
          await discard(blob);
          throw notFound(row.document_id ?? "");
        }
        content.onEvent?.();
        await staging.remove(id);
        return {
          document: toDocument(saved.document),
          version: toVersion(saved.version),
          upload: toSession(completed!),
        };
      });
    },

    async abortUpload(req, ctx) {
      const caller = callerOf(ctx);
      const id = req.uploadId;
      return queue.run(id, async () => {
        const row = await sessions.find(id);
        // Nothing of the caller's remains under this id (never was, already aborted, or someone
        // else's): the outcome asked for holds, and a retried abort must not fail.
        if (!row || row.owner !== caller.subject) return {};
        if (row.state === "open" && (await sessions.removeOpen(id))) {
          await staging.remove(id);
          return {};
        }
        // Completed, here or (if the delete found nothing) by another replica meanwhile.
        const now = row.state === "completed" ? row : await sessions.find(id);
        if (now?.state === "completed" && !now.expired) {
          throw fail(
            Code.FailedPrecondition,
            `upload ${id} is already complete as version ${now.version} of document ${now.document_id}; delete the document instead`,
          );
        }
        return {};
      });
    },
  };
}
