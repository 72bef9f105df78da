import { sql, type Kysely } from "kysely";
import { DocumentUploadedSchema } from "../../gen/medmesh/events/v1/document_events_pb.js";
import { eventTopic, type OutboxDatabase } from "../../platform/events/index.js";
import { periodicJob } from "../../platform/lifecycle/periodic-job.js";
import { logger as rootLogger, type Logger } from "../../platform/telemetry/logger.js";
import { enqueueUploaded } from "./events.js";
import { recordOutcome } from "./outcome-store.js";
import type { StatusWriter } from "./status-writer.js";
import type { DocumentsDB, VersionRow } from "./tables.js";

export interface ReconcilerOptions {
  /** Writes go through it, in transactions that also hold the outbox (same schema). */
  status: StatusWriter;
  /** A current version with no outcome and no sign of life for this long is re-driven. */
  stuckAfterMs: number;
  /** Re-drives a worker took up without an outcome before the version is marked FAILED. */
  maxRedrives: number;
  /** Called after a run wrote events to the outbox: wake the relay here. */
  onRedrive?: () => void;
  batchSize?: number;
  logger?: Logger;
}

export interface ReconcileRun {
  redriven: number;
  failed: number;
}

export interface Reconciler {
  /** One pass over every stuck version, in batches; runs never overlap within a process. */
  reconcile(): Promise<ReconcileRun>;
  /** Reconciles every `intervalMs` in the background; 0 never. */
  start(intervalMs: number): void;
  /** Stops the timer and waits for a run under way. */
  stop(): Promise<void>;
}

/** The sentence the uploader reads when the reconciler gives up on a version. */
export function neverFinishedMessage(redrives: number): string {
  return (
    `The document could not be processed: it was sent to processing ${redrives + 1} times and never finished. ` +
    "It has been set aside for the operators; uploading it again starts over."
  );
}

/**
 * Finds versions that should be on their way through processing but are not, and sends them
 * again. Documents owns the statuses, so it is the one that can tell: a document whose current
 * version is UPLOADED or PROCESSING, with no outcome recorded, and no sign of life — no upload,
 * StartProcessing or re-drive — for `stuckAfterMs`. That is an upload event that was lost, a dead
 * letter nobody replayed, or a worker that gave up without being able to say so.
 *
 * A re-drive writes a fresh DocumentUploaded for the version into the outbox, under a new event
 * id (the worker's inbox would drop the old one). Repeating it is harmless: StartProcessing
 * answers a version that has meanwhile finished with its outcome, and the worker only publishes
 * that outcome again, under its stable id.
 *
 * Versions whose key still has an unsent event in the outbox are left alone: the event is owed to
 * Kafka, and re-driving would only queue a copy behind it. A re-drive counts against
 * `maxRedrives` only once a worker has started on it (StartProcessing after the re-drive) and it
 * still produced no outcome: a processing outage then costs no document its chance, while a
 * version that takes its worker down each time (or is dead-lettered each time without its failure
 * being recorded) is marked FAILED with `processing_error` instead of being sent forever.
 *
 * Several replicas may run it at once: candidates are claimed with `for update skip locked` on the
 * document and version rows, and the claim moves `redriven_at`, which takes the version out of
 * every other replica's next query.
 */
export function processingReconciler(opts: ReconcilerOptions): Reconciler {
  const { status, stuckAfterMs, maxRedrives } = opts;
  const batchSize = opts.batchSize ?? 100;
  const log = (opts.logger ?? rootLogger).child({ component: "processing-reconciler" });
  async function batch(): Promise<ReconcileRun & { seen: number }> {
    return status.transaction(async (trx, setStatus) => {
      // The outbox shares the documents schema; its type is the events kit's.
      const scoped = trx as unknown as Kysely<DocumentsDB & OutboxDatabase>;
      const stuck = await scoped
        .selectFrom("document as d")
        .innerJoin("document_version as v", (j) =>
          j.onRef("v.document_id", "=", "d.id").onRef("v.version", "=", "d.version"),
        )
        .selectAll("v")
        .where("d.deleted_at", "is", null)
        .where("d.processing_status", "in", ["uploaded", "processing"])
        .where(({ not, exists, selectFrom }) =>
          not(
            exists(
              selectFrom("processing_outcome as o")
                .select("o.version")
                .whereRef("o.document_id", "=", "d.id")
                .whereRef("o.version", "=", "d.version"),
            ),
          ),
        )
        .where(({ not, exists, selectFrom }) =>
          not(
            exists(
              selectFrom("outbox as ob")
                .select("ob.id")
                .where("ob.topic", "=", eventTopic(DocumentUploadedSchema))
                .where(sql<boolean>`ob.key = d.id::text`)
                .where("ob.sent_at", "is", null),
            ),
          ),
        )
        .where(
          sql<Date>`greatest(v.created_at, v.started_at, v.redriven_at)`,
          "<",
          sql<Date>`now() - ${stuckAfterMs} * interval '1 millisecond'`,
        )
        .orderBy("d.seq")
        .limit(batchSize)
        .forUpdate(["d", "v"])
        .skipLocked()
        .execute();

      let redriven = 0;
      let failed = 0;
      for (const v of stuck) {
        // The last re-drive was taken up by a worker (it started after it) and still nothing came of it.
        const stalled = v.stalled_redrives + (v.redriven_at && v.started_at && v.started_at >= v.redriven_at ? 1 : 0);
        if (stalled >= maxRedrives) {
          await recordOutcome(
            trx,
            setStatus,
            { documentId: v.document_id, version: v.version, current: v.version },
            { status: "failed", reason: "processing_error", message: neverFinishedMessage(v.redrives) },
          );
          await markRedrive(scoped, v, stalled, false);
          log.warn("version never finished processing; marked failed", {
            document_id: v.document_id,
            version: v.version,
            redrives: v.redrives,
          });
          failed++;
          continue;
        }
        await enqueueUploaded(trx, v as VersionRow);
        await markRedrive(scoped, v, stalled, true);
        log.info("re-driving a version stuck without an outcome", {
          document_id: v.document_id,
          version: v.version,
          redrive: v.redrives + 1,
          stalled_redrives: stalled,
        });
        redriven++;
      }
      return { redriven, failed, seen: stuck.length };
    });
  }

  async function run(): Promise<ReconcileRun> {
    const total = { redriven: 0, failed: 0 };
    for (;;) {
      const { redriven, failed, seen } = await batch();
      total.redriven += redriven;
      total.failed += failed;
      if (redriven > 0) opts.onRedrive?.();
      if (seen < batchSize) return total;
    }
  }

  const job = periodicJob(run, (err) =>
    log.warn("reconciling stuck documents failed; will try again", { error: err as Error }),
  );
  return { reconcile: job.run, start: job.start, stop: job.stop };
}

async function markRedrive(
  db: Kysely<DocumentsDB & OutboxDatabase>,
  v: { document_id: string; version: number },
  stalled: number,
  redriven: boolean,
): Promise<void> {
  await db
    .updateTable("document_version")
    .set((eb) => ({
      redriven_at: sql<Date>`now()`,
      redrives: redriven ? eb("redrives", "+", 1) : eb.ref("redrives"),
      stalled_redrives: stalled,
    }))
    .where("document_id", "=", v.document_id)
    .where("version", "=", v.version)
    .execute();
}
