import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { ProcessingResultSchema, type DocumentProcessingService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { notFound } from "./access.js";
import { failureReasons, toOutcome } from "./model.js";
import type { NewOutcome, OutcomeStore } from "./outcome-store.js";
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
  status: StatusWriter,
): ServiceImpl<typeof DocumentProcessingService> {
  return {
    async startProcessing(req) {
      const res = await outcomes.start(req.documentId, req.version);
      switch (res.kind) {
        case "no_document":
          throw notFound(req.documentId);
        case "no_version":
          throw noVersion(req.documentId, req.version, res.current);
        case "done":
          return { proceed: false, outcome: toOutcome(res.outcome) };
        case "proceed":
          return { proceed: true };
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
        case "recorded":
          return { outcome: toOutcome(res.outcome), alreadyRecorded: res.already };
      }
    },

    async recordIndexed(req) {
      const res = await recordIndexed(status, req.documentId, req.version);
      if (res === "no_document") throw notFound(req.documentId);
      return { changed: res === "changed" };
    },
  };
}
