import { sql, type Kysely } from "kysely";
import { DocumentStore, type DocumentsDB, type OutcomeRow, type StatusRow } from "./store.js";

export type StartResult =
  | { kind: "no_document" }
  | { kind: "no_version"; current: number }
  /** The version already has an outcome: the event was delivered again. */
  | { kind: "done"; outcome: OutcomeRow }
  /** Go ahead; `moved` says whether this call moved the document to processing. */
  | { kind: "proceed"; moved: boolean };

export type NewOutcome =
  { status: "processed"; result: Uint8Array } | { status: "failed"; reason: string; message: string };

export type RecordResult =
  | { kind: "no_document" }
  | { kind: "no_version"; current: number }
  | { kind: "recorded"; outcome: OutcomeRow; already: boolean; moved: boolean };

function outcomeIn(db: Kysely<DocumentsDB>, documentId: string, version: number): Promise<OutcomeRow | undefined> {
  return db
    .selectFrom("processing_outcome")
    .selectAll()
    .where("document_id", "=", documentId)
    .where("version", "=", version)
    .executeTakeFirst();
}

/** Statuses after which nothing more happens to a version until someone uploads another. */
export const TERMINAL_STATUSES = new Set(["processed", "failed", "indexed"]);

/**
 * The pipeline's side of the documents schema: the status history and each version's outcome.
 * Status moves only for the document's current version; an outcome for an older version is kept
 * but leaves the document's status alone, since that is about the newer content.
 */
export class ProcessingStore {
  constructor(
    private readonly db: Kysely<DocumentsDB>,
    private readonly onStatusChange?: (documentId: string) => void,
  ) {}

  private async lockDocument(trx: Kysely<DocumentsDB>, id: string) {
    return trx
      .selectFrom("document")
      .select(["version", "processing_status"])
      .where("id", "=", id)
      .where("deleted_at", "is", null)
      .forUpdate()
      .executeTakeFirst();
  }

  async start(documentId: string, version: number): Promise<StartResult> {
    const res = await this.startInTransaction(documentId, version);
    if (res.kind === "proceed" && res.moved) this.onStatusChange?.(documentId);
    return res;
  }

  async record(documentId: string, version: number, outcome: NewOutcome): Promise<RecordResult> {
    const res = await this.recordInTransaction(documentId, version, outcome);
    if (res.kind === "recorded" && res.moved) this.onStatusChange?.(documentId);
    return res;
  }

  private async startInTransaction(documentId: string, version: number): Promise<StartResult> {
    return this.db.transaction().execute(async (trx) => {
      const doc = await this.lockDocument(trx, documentId);
      if (!doc) return { kind: "no_document" } as const;
      if (version > doc.version) return { kind: "no_version", current: doc.version } as const;
      const done = await outcomeIn(trx, documentId, version);
      if (done) return { kind: "done", outcome: done } as const;
      // Only the step from uploaded is a change: a retry finds it processing already, and an
      // older version's processing says nothing about the current content.
      if (version !== doc.version || doc.processing_status !== "uploaded")
        return { kind: "proceed", moved: false } as const;
      await trx
        .updateTable("document")
        .set({ processing_status: "processing", updated_at: sql`now()` as never })
        .where("id", "=", documentId)
        .execute();
      await new DocumentStore(trx).recordStatus(documentId, version, "processing");
      return { kind: "proceed", moved: true } as const;
    });
  }

  private async recordInTransaction(documentId: string, version: number, outcome: NewOutcome): Promise<RecordResult> {
    return this.db.transaction().execute(async (trx) => {
      const doc = await this.lockDocument(trx, documentId);
      if (!doc) return { kind: "no_document" } as const;
      if (version > doc.version) return { kind: "no_version", current: doc.version } as const;
      const failure = outcome.status === "failed" ? { reason: outcome.reason, message: outcome.message } : undefined;
      const inserted = await trx
        .insertInto("processing_outcome")
        .values({
          document_id: documentId,
          version,
          status: outcome.status,
          result: outcome.status === "processed" ? outcome.result : null,
          failure_reason: failure?.reason ?? null,
          failure_message: failure?.message ?? null,
        })
        .onConflict((oc) => oc.columns(["document_id", "version"]).doNothing())
        .returningAll()
        .executeTakeFirst();
      if (!inserted) {
        const first = (await outcomeIn(trx, documentId, version))!;
        return { kind: "recorded", outcome: first, already: true, moved: false } as const;
      }
      if (version !== doc.version)
        return { kind: "recorded", outcome: inserted, already: false, moved: false } as const;
      await trx
        .updateTable("document")
        .set({ processing_status: outcome.status, updated_at: sql`now()` as never })
        .where("id", "=", documentId)
        .execute();
      await new DocumentStore(trx).recordStatus(documentId, version, outcome.status, failure);
      return { kind: "recorded", outcome: inserted, already: false, moved: true } as const;
    });
  }

  async outcome(documentId: string, version: number): Promise<OutcomeRow | undefined> {
    return outcomeIn(this.db, documentId, version);
  }

  async latestStatus(documentId: string): Promise<StatusRow | undefined> {
    return this.db
      .selectFrom("document_status")
      .selectAll()
      .where("document_id", "=", documentId)
      .orderBy("seq", "desc")
      .limit(1)
      .executeTakeFirst();
  }

  async statusesAfter(documentId: string, afterSeq: number): Promise<StatusRow[]> {
    return this.db
      .selectFrom("document_status")
      .selectAll()
      .where("document_id", "=", documentId)
      .where("seq", ">", afterSeq)
      .orderBy("seq")
      .execute();
  }
}
