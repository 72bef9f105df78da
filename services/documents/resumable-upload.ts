import { createReadStream } from "node:fs";
import { mkdir, open, readdir, rm } from "node:fs/promises";
import path from "node:path";
import { randomUUID } from "node:crypto";
import { create, getOption } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { field as validationRules } from "../../gen/buf/validate/validate_pb.js";
import {
  UploadPartRequestSchema,
  UploadSessionSchema,
  UploadState,
  type DocumentService,
  type UploadSession,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import {
  BlobIntegrityError,
  BlobTooLargeError,
  detectContentType,
  SNIFF_BYTES,
  type BlobRef,
} from "../../platform/blobs/index.js";
import type { Principal } from "../../platform/grpc/interceptors/access.js";
import { logger } from "../../platform/telemetry/logger.js";
import { callerOf } from "../../platform/grpc/caller.js";
import { notFound, type DocumentAccess } from "./access.js";
import { toDocument, toVersion } from "./model.js";
import type { ContentOptions } from "./service.js";
import type { DocumentStore, NewDocument } from "./store.js";
import { bytesText, contradicts, discardUnlessUsed } from "./upload.js";
import type { UploadSessionRow, UploadSessionStore } from "./upload-sessions.js";
import { isUniqueViolation } from "../../platform/db/errors.js";

export interface ResumableUploadOptions {
  /** How long an upload may sit untouched before it expires. */
  sessionTtlMs: number;
  /** Where the bytes of unfinished uploads wait, one `<upload_id>.part` file each. */
  stagingDir: string;
  sessions: UploadSessionStore;
}

type Handlers = Pick<
  ServiceImpl<typeof DocumentService>,
  "startUpload" | "uploadPart" | "getUploadStatus" | "completeUpload" | "abortUpload"
>;

/** Read from the contract's validation rule, so the number announced and the number enforced agree. */
const MAX_PART_BYTES = (() => {
  const rules = getOption(UploadPartRequestSchema.field.data, validationRules);
  if (rules.type.case !== "bytes" || !rules.type.value.maxLen)
    throw new Error("UploadPartRequest.data lost its max_len rule in the contract");
  return Number(rules.type.value.maxLen);
})();

const PART_FILE = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.part$/;

const stagingPath = (dir: string, id: string) => path.join(dir, `${id}.part`);

function fail(code: Code, message: string): ConnectError {
  return new ConnectError(message, code);
}

const uploadNotFound = (id: string) => fail(Code.NotFound, `upload ${id} does not exist`);

const isMissing = (err: unknown) => (err as { code?: string })?.code === "ENOENT";

/**
 * Runs work on one key at a time, in arrival order. Parts of one upload are written and counted
 * one after another; the database's conditional updates are what keep several replicas honest.
 */
class PerKeyQueue {
  private readonly tails = new Map<string, Promise<void>>();

  async run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const before = this.tails.get(key);
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = before ? before.then(() => mine) : mine;
    this.tails.set(key, tail);
    try {
      await before;
      return await work();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}

async function createEmpty(file: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const fh = await open(file, "wx");
  await fh.close();
  // The directory entry must survive a crash too, or acknowledged parts would have no file.
  const dir = await open(path.dirname(file), "r");
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

async function writeAt(file: string, data: Uint8Array, position: number): Promise<void> {
  const fh = await open(file, "r+");
  try {
    for (let done = 0; done < data.length;) {
      const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
      done += bytesWritten;
    }
    // A part is acknowledged only once it is on disk: the client will not send it again.
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function readHead(file: string, length: number): Promise<Buffer> {
  if (length === 0) return Buffer.alloc(0);
  const fh = await open(file, "r");
  try {
    const buf = Buffer.alloc(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await fh.read(buf, got, length - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return buf.subarray(0, got);
  } finally {
    await fh.close();
  }
}

function toSession(row: UploadSessionRow): UploadSession {
  return create(UploadSessionSchema, {
    uploadId: row.id,
    documentId: row.document_id ?? "",
    filename: row.filename,
    sizeBytes: BigInt(row.size_bytes),
    nextOffset: BigInt(row.next_offset),
    state: row.state === "completed" ? UploadState.COMPLETED : UploadState.OPEN,
    maxPartBytes: MAX_PART_BYTES,
    expireTime: timestampFromDate(new Date(row.expires_at)),
    version: row.version ?? 0,
  });
}

/** Thrown inside the completing transaction when the session is no longer open, to undo the version. */
class SessionMoved extends Error {}

export function resumableUploadHandlers(
  store: DocumentStore,
  access: DocumentAccess,
  content: ContentOptions,
): Handlers {
  const { sessions, stagingDir, sessionTtlMs: ttl } = content.resumable;
  const queue = new PerKeyQueue();
  const fileOf = (id: string) => stagingPath(stagingDir, id);

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
    await rm(fileOf(id), { force: true });
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
      const row = await sessions.create(
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
      );
      // The row comes first: a staging file then always has a row while it matters, so one
      // without a row is safe to sweep at any time.
      try {
        await createEmpty(fileOf(row.id));
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
        const data = req.data;
        const end = offset + data.length;
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

        const file = fileOf(id);
        let detected: { mime_type: string; needs_ocr: boolean } | undefined;
        const sniffLength = Math.min(SNIFF_BYTES, row.size_bytes);
        if (row.mime_type === null && end >= sniffLength) {
          let earlier: Buffer;
          try {
            earlier = await readHead(file, offset);
          } catch (err) {
            if (isMissing(err)) throw await lost(id, caller);
            throw err;
          }
          if (earlier.length < offset) throw await lost(id, caller);
          const type = detectContentType(Buffer.concat([earlier, data]).subarray(0, sniffLength));
          // An unacceptable file cannot become acceptable by sending more, so the upload ends here.
          if (type.kind === "unknown") {
            await endSession(id);
            throw fail(
              Code.InvalidArgument,
              `this file cannot be accepted: ${type.reason ?? "its type is not supported"}`,
            );
          }
          if (contradicts(row.declared_mime_type, type)) {
            await endSession(id);
            throw fail(
              Code.InvalidArgument,
              `the file was declared as ${row.declared_mime_type} but its content is ${type.mime}`,
            );
          }
          detected = { mime_type: type.mime, needs_ocr: type.needsOcr };
        }

        try {
          await writeAt(file, data, offset);
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

        const file = fileOf(id);
        // Recorded by the part that completed the sniff window; next_offset cannot move past it otherwise.
        const type = { mime: row.mime_type!, needsOcr: row.needs_ocr! };
        let blob: BlobRef;
        try {
          // The client's cancel does not stop this: a retry then finds the work done.
          blob = await content.blobs.put(createReadStream(file, { start: 0, end: row.size_bytes - 1 }), {
            maxBytes: content.maxUploadBytes,
            expectedSha256: req.sha256,
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
          if (isMissing(err)) throw await lost(id, caller);
          throw err;
        }
        if (blob.size !== row.size_bytes) {
          await discard(blob);
          throw await lost(id, caller);
        }

        const version = {
          sha256: blob.sha256,
          size_bytes: blob.size,
          mime_type: type.mime,
          needs_ocr: type.needsOcr,
          filename: row.filename,
          uploaded_by: caller.subject,
        };
        let completed: UploadSessionRow | undefined;
        let saved: Awaited<ReturnType<DocumentStore["addVersion"]>>;
        try {
          saved = await store.addVersion(target, version, async (trx, s) => {
            completed = await sessions.markCompleted(
              trx,
              id,
              { document_id: s.document.id, version: s.version.version, sha256: blob.sha256 },
              ttl,
            );
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
        await rm(file, { force: true });
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
          await rm(fileOf(id), { force: true });
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

export interface UploadSweeper {
  /**
   * Removes expired sessions (open or completed) with their staging files, then staging files no
   * session owns (left by a crash between the two).
   */
  sweep(): Promise<{ expired: number; orphans: number }>;
  /** Sweeps every `intervalMs` in the background; 0 never. */
  start(intervalMs: number): void;
  /** Stops the timer and waits for a sweep under way. */
  stop(): Promise<void>;
}

const SWEEP_BATCH = 500;

export function uploadSweeper(opts: ResumableUploadOptions): UploadSweeper {
  let timer: NodeJS.Timeout | undefined;
  let last: Promise<unknown> = Promise.resolve();

  async function expired(): Promise<number> {
    let removed = 0;
    for (;;) {
      const ids = await opts.sessions.removeExpired(SWEEP_BATCH);
      await Promise.all(ids.map((id) => rm(stagingPath(opts.stagingDir, id), { force: true })));
      removed += ids.length;
      if (ids.length < SWEEP_BATCH) return removed;
    }
  }

  async function orphans(): Promise<number> {
    let names: string[];
    try {
      names = await readdir(opts.stagingDir);
    } catch (err) {
      if (isMissing(err)) return 0;
      throw err;
    }
    const ids = names.flatMap((n) => PART_FILE.exec(n)?.[1] ?? []);
    let removed = 0;
    for (let i = 0; i < ids.length; i += SWEEP_BATCH) {
      const batch = ids.slice(i, i + SWEEP_BATCH);
      const alive = await opts.sessions.existing(batch);
      for (const id of batch) {
        if (alive.has(id)) continue;
        await rm(stagingPath(opts.stagingDir, id), { force: true });
        removed++;
      }
    }
    return removed;
  }

  // One sweep at a time, whether the timer or a caller asked for it.
  function sweep(): Promise<{ expired: number; orphans: number }> {
    const run = last.then(async () => ({ expired: await expired(), orphans: await orphans() }));
    last = run.catch(() => undefined);
    return run;
  }

  return {
    sweep,
    start(intervalMs) {
      if (intervalMs <= 0 || timer) return;
      timer = setInterval(() => {
        sweep().catch((err: unknown) =>
          logger.warn("sweeping expired uploads failed; will try again", { error: (err as Error).message }),
        );
      }, intervalMs);
      timer.unref();
    },
    async stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
      await last;
    },
  };
}
