import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { DocumentService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { callerOf } from "../../platform/grpc/caller.js";
import type { DocumentAccess } from "./access.js";
import { toOutcome, toStatusChange } from "./model.js";
import { TERMINAL_STATUSES, type ProcessingStore } from "./processing-store.js";
import type { DocumentStore } from "./store.js";

export interface StatusSubscription {
  /** Resolves on the next change notice, after the poll interval at the latest, or when the signal aborts. */
  next(signal: AbortSignal): Promise<void>;
  close(): void;
}

/**
 * Tells watchers that a document's status changed. A change made by this process wakes them at
 * once; one made by another instance of the service is found by polling the status history, so
 * any number of replicas can share one database without a broadcast channel between them.
 */
export class StatusFeed {
  private readonly listeners = new Map<string, Set<() => void>>();

  constructor(readonly pollMs = 1000) {}

  notify(documentId: string): void {
    for (const wake of this.listeners.get(documentId) ?? []) wake();
  }

  subscribe(documentId: string): StatusSubscription {
    let pending = false;
    let resolveWait: (() => void) | undefined;
    const wake = () => {
      pending = true;
      resolveWait?.();
    };
    let set = this.listeners.get(documentId);
    if (!set) this.listeners.set(documentId, (set = new Set()));
    set.add(wake);
    return {
      next: (signal) => {
        if (pending || signal.aborted) {
          pending = false;
          return Promise.resolve();
        }
        return new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(timer);
            signal.removeEventListener("abort", done);
            resolveWait = undefined;
            pending = false;
            resolve();
          };
          const timer = setTimeout(done, this.pollMs);
          signal.addEventListener("abort", done, { once: true });
          resolveWait = done;
        });
      },
      close: () => {
        set!.delete(wake);
        if (set!.size === 0) this.listeners.delete(documentId);
      },
    };
  }

  /** Documents with at least one watcher in this process (for tests and metrics). */
  get watched(): number {
    return this.listeners.size;
  }
}

type Handlers = Pick<ServiceImpl<typeof DocumentService>, "watchDocument" | "getProcessingResult">;

export function statusHandlers(
  store: DocumentStore,
  access: DocumentAccess,
  processing: ProcessingStore,
  feed: StatusFeed,
): Handlers {
  return {
    async *watchDocument(req, ctx) {
      const caller = callerOf(ctx);
      const doc = await access.visible(req.id, caller);
      // Subscribed before reading, so a change between the read and the first wait is not missed.
      const changes = feed.subscribe(req.id);
      try {
        const latest = await processing.latestStatus(req.id);
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
          const rows = await processing.statusesAfter(req.id, lastSeq);
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
      const outcome = await processing.outcome(req.documentId, version);
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
