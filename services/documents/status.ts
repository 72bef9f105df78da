import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { DocumentService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { callerOf } from "../../platform/grpc/caller.js";
import type { DocumentAccess } from "./access.js";
import { toOutcome, toStatusChange } from "./model.js";
import type { OutcomeStore } from "./outcome-store.js";
import type { StatusFeed } from "./status-feed.js";
import type { DocumentStore } from "./store.js";

/** Statuses after which nothing more happens to a version until someone uploads another. */
const TERMINAL_STATUSES = new Set(["processed", "failed", "indexed"]);

type Handlers = Pick<ServiceImpl<typeof DocumentService>, "watchDocument" | "getProcessingResult">;

/** WatchDocument and GetProcessingResult: a document's progress through processing, for its readers. */
export function statusHandlers(
  store: DocumentStore,
  access: DocumentAccess,
  outcomes: OutcomeStore,
  feed: StatusFeed,
): Handlers {
  return {
    async *watchDocument(req, ctx) {
      const caller = callerOf(ctx);
      const doc = await access.visible(req.id, caller);
      // Subscribed before reading, so a change between the read and the first wait is not missed.
      const changes = feed.subscribe(req.id);
      try {
        const latest = await store.latestStatus(req.id);
        let lastSeq = 0;
        if (latest) {
          lastSeq = Number(latest.seq);
          yield toStatusChange(latest);
          if (TERMINAL_STATUSES.has(latest.status)) return;
        } else {
          yield toStatusChange({
            document_id: doc.id,
            version: doc.version,
            status: doc.processing_status,
            failure_reason: null,
            failure_message: null,
            created_at: doc.updated_at,
          });
          if (TERMINAL_STATUSES.has(doc.processing_status)) return;
        }
        for (;;) {
          await changes.next(ctx.signal);
          if (ctx.signal.aborted) return;
          const rows = await store.statusesAfter(req.id, lastSeq);
          if (rows.length === 0) {
            // Quiet for a poll interval: make sure the document still exists for this caller.
            if (!(await store.findLive(req.id)))
              throw new ConnectError(`document ${req.id} was deleted`, Code.NotFound);
            continue;
          }
          for (const row of rows) {
            lastSeq = Number(row.seq);
            yield toStatusChange(row);
            if (TERMINAL_STATUSES.has(row.status)) return;
          }
        }
      } finally {
        changes.close();
      }
    },

    async getProcessingResult(req, ctx) {
      const doc = await access.visible(req.documentId, callerOf(ctx));
      const version = req.version || doc.version;
      if (version === 0)
        throw new ConnectError(`document ${req.documentId} has no content yet`, Code.FailedPrecondition);
      if (version > doc.version)
        throw new ConnectError(`document ${req.documentId} has no version ${version}`, Code.NotFound);
      const outcome = await outcomes.outcome(req.documentId, version);
      if (!outcome) {
        const where = version === doc.version ? ` (its status is ${doc.processing_status})` : "";
        throw new ConnectError(
          `version ${version} of document ${req.documentId} has not been processed yet${where}`,
          Code.FailedPrecondition,
        );
      }
      return { outcome: toOutcome(outcome) };
    },
  };
}
