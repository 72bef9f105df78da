import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { DocumentService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { callerOf } from "../../platform/grpc/caller.js";
import { notFound, type DocumentAccess } from "./access.js";
import type { PerUserSlots } from "./caller-limits.js";
import { toOutcome, toStatusChange } from "./model.js";
import type { OutcomeStore } from "./outcome-store.js";
import type { StatusFeed } from "./status-feed.js";
import type { DocumentStore } from "./store.js";

/**
 * Statuses after which nothing more happens to a version until someone uploads another. Where
 * search runs, a processed version goes on to INDEXED, and watchers are told about that too.
 */
const terminalStatuses = (untilIndexed: boolean) =>
  new Set(untilIndexed ? ["failed", "indexed"] : ["processed", "failed", "indexed"]);

type Handlers = Pick<ServiceImpl<typeof DocumentService>, "watchDocument" | "getProcessingResult">;

/** WatchDocument and GetProcessingResult: a document's progress through processing, for its readers. */
export function statusHandlers(
  store: DocumentStore,
  access: DocumentAccess,
  outcomes: OutcomeStore,
  feed: StatusFeed,
  watches: PerUserSlots,
  untilIndexed = false,
): Handlers {
  const TERMINAL_STATUSES = terminalStatuses(untilIndexed);
  return {
    async *watchDocument(req, ctx) {
      const caller = callerOf(ctx);
      // Held until the stream ends in any way: finished, failed, cancelled or past its deadline.
      const release = watches.take(caller.subject);
      // Subscribed before the first read, so a change between the read and the first wait is not missed.
      const changes = feed.watch(req.id);
      try {
        const doc = await access.visible(req.id, caller);
        const latest = await store.latestStatus(req.id);
        let lastSeq = 0;
        if (latest) {
          lastSeq = Number(latest.seq);
          changes.seen(lastSeq);
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
          const update = await changes.next(ctx.signal);
          // Past its deadline, cancelled or the server stopping: the stream ends with that status, not OK.
          if (!update) throw ConnectError.from(ctx.signal.reason);
          // Whoever lost sight of the document hears what a new WatchDocument would tell them.
          if (update.document?.deleted) throw new ConnectError(`document ${req.id} was deleted`, Code.NotFound);
          if (update.document && !access.sees(caller, update.document)) throw notFound(req.id);
          for (const row of update.statuses) {
            if (Number(row.seq) <= lastSeq) continue;
            lastSeq = Number(row.seq);
            yield toStatusChange(row);
            if (TERMINAL_STATUSES.has(row.status)) return;
          }
        }
      } finally {
        changes.close();
        release();
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
      const answer = toOutcome(outcome);
      if (
        req.maxTextChars > 0 &&
        answer.outcome.case === "result" &&
        answer.outcome.value.text.length > req.maxTextChars
      )
        answer.outcome.value.text = answer.outcome.value.text.slice(0, req.maxTextChars);
      return { outcome: answer };
    },
  };
}
