import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { ProcessingResultSchema, type DocumentProcessingService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { notFound } from "./access.js";
import { failureReasons, toOutcome } from "./model.js";
import type { NewOutcome, OutcomeStore } from "./outcome-store.js";
import type { BlobStore } from "../../platform/blobs/index.js";
import { logger } from "../../platform/telemetry/logger.js";
import { recordIndexed } from "./indexed.js";
import type { StatusWriter } from "./status-writer.js";

function noVersion(documentId: string, version: number, current: number): ConnectError {
  return new ConnectError(
    `document ${documentId} has no version ${version} (its current version is ${current})`,
    Code.NotFound,
  );
}

/**
 * DocumentProcessingService: how the processing worker reports on the versions it analyses. The
 * contract admits service principals only, so there are no ownership checks here: the worker
 * acts for the platform on every document.
 */
export function workerReportsService(
  outcomes: OutcomeStore,
  blobs: BlobStore,
  status: StatusWriter,
): ServiceImpl<typeof DocumentProcessingService> {
  /**
   * A small version's bytes, for the StartProcessing answer. Best effort: a blob that cannot be
   * read here is left out, and the worker's ReadContent then reports the problem as it always has.
   */
  async function inlineContent(
    documentId: string,
    content: { sha256: string; size: number } | undefined,
    maxBytes: number,
    signal: AbortSignal,
  ): Promise<Uint8Array | undefined> {
    if (!content || content.size > maxBytes) return undefined;
    try {
      const chunks: Buffer[] = [];
      for await (const c of await blobs.get(content.sha256, { signal })) chunks.push(c as Buffer);
      const bytes = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
      return bytes.length === content.size ? bytes : undefined;
    } catch (err) {
      if (!signal.aborted)
        logger.warn("could not read a version to hand it to the worker", {
          document_id: documentId,
          error: err as Error,
        });
      return undefined;
    }
  }

  return {
    async startProcessing(req, ctx) {
      const res = await outcomes.start(req.documentId, req.version);
      switch (res.kind) {
        case "no_document":
          throw notFound(req.documentId);
        case "no_version":
          throw noVersion(req.documentId, req.version, res.current);
        case "done":
          return { proceed: false, outcome: toOutcome(res.outcome) };
        case "proceed": {
          const max = req.inlineContentMaxBytes;
          const content = max > 0 ? await inlineContent(req.documentId, res.content, max, ctx.signal) : undefined;
          return { proceed: true, content };
        }
      }
    },

    async recordProcessingResult(req) {
      let outcome: NewOutcome;
      if (req.outcome.case === "result") {
        outcome = {
          status: "processed",
          result: toBinary(ProcessingResultSchema, create(ProcessingResultSchema, req.outcome.value)),
        };
      } else if (req.outcome.case === "failure") {
        outcome = {
          status: "failed",
          reason: failureReasons.name(req.outcome.value.reason),
          message: req.outcome.value.message,
        };
      } else {
        // Validation requires one of them; this only guards a caller that skipped it.
        throw new ConnectError("send a result or a failure", Code.InvalidArgument);
      }
      const res = await outcomes.record(req.documentId, req.version, outcome);
      switch (res.kind) {
        case "no_document":
          throw notFound(req.documentId);
        case "no_version":
          throw noVersion(req.documentId, req.version, res.current);
        case "recorded": {
          // What this call recorded is the request's own result: no need to decode it back.
          const sent = !res.already && req.outcome.case === "result" ? req.outcome.value : undefined;
          return { outcome: toOutcome(res.outcome, sent), alreadyRecorded: res.already };
        }
      }
    },

    async recordIndexed(req) {
      const res = await recordIndexed(status, req.documentId, req.version);
      if (res === "no_document") throw notFound(req.documentId);
      return { changed: res === "changed" };
    },
  };
}
