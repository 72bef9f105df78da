import type { Kysely } from "kysely";
import { sql } from "kysely";
import { queryShape } from "../../platform/db/query-shape.js";
import type { SetStatus, StatusWriter } from "./status-writer.js";
import type { DocumentsDB, OutcomeRow } from "./tables.js";

export type StartResult =
  | { kind: "no_document" }
  | { kind: "no_version"; current: number }
  /** The version already has an outcome: the event was delivered again. */
  | { kind: "done"; outcome: OutcomeRow }
  /** Go ahead; `content` says where the version's bytes are, when the version exists. */
  | { kind: "proceed"; content?: { sha256: string; size: number } };

export type NewOutcome =
  { status: "processed"; result: Uint8Array } | { status: "failed"; reason: string; message: string };

export type RecordResult =
  | { kind: "no_document" }
  | { kind: "no_version"; current: number }
  | { kind: "recorded"; outcome: OutcomeRow; already: boolean };

/** The outcome columns a statement joined in (o_*), as a row; undefined when the join found none. */
function joinedOutcome(
  row: {
    o_status: OutcomeRow["status"] | null;
    o_result: OutcomeRow["result"] | null;
    o_failure_reason: OutcomeRow["failure_reason"] | null;
    o_failure_message: OutcomeRow["failure_message"] | null;
    o_created_at: Date | null;
  },
  documentId: string,
  version: number,
): OutcomeRow | undefined {
  if (row.o_status === null) return undefined;
  return {
    document_id: documentId,
    version,
    status: row.o_status,
    result: row.o_result,
    failure_reason: row.o_failure_reason,
    failure_message: row.o_failure_message,
    created_at: row.o_created_at!,
  };
}

function outcomeIn(db: Kysely<DocumentsDB>, documentId: string, version: number): Promise<OutcomeRow | undefined> {
  return db
    .selectFrom("processing_outcome")
    .selectAll()
    .where("document_id", "=", documentId)
    .where("version", "=", version)
    .executeTakeFirst();
}

/**
 * What the processing worker reports about each version: that it started, and the outcome.
 * Status moves only for the document's current version; an outcome for an older version is kept
 * but leaves the document's status alone, since that is about the newer content.
 */
export class OutcomeStore {
  constructor(
    private readonly db: Kysely<DocumentsDB>,
    private readonly status: StatusWriter,
  ) {}

  async start(documentId: string, version: number): Promise<StartResult> {
    // Without a transaction of its own: one statement is atomic, and BEGIN and COMMIT would be two
    // more round trips on a call every processed version makes.
    const row = await this.startShape.first(this.db, documentId, version);
    if (!row) return { kind: "no_document" };
    if (version > row.current) return { kind: "no_version", current: row.current };
    const done = joinedOutcome(row, documentId, version);
    if (done) return { kind: "done", outcome: done };
    if (row.moved) this.status.committed(documentId);
    if (row.v_sha256 === null) return { kind: "proceed" };
    return { kind: "proceed", content: { sha256: row.v_sha256, size: Number(row.v_size_bytes) } };
  }

  /**
   * StartProcessing in one statement: lock the live document and read the version's outcome; when
   * there is none, move the current version from uploaded to processing (column and history, as
   * StatusWriter does) and stamp the version's started_at, a sign of life for the reconciler. Only
   * the step from uploaded is a change: a retry finds it processing already, and an older version's
   * processing says nothing about the current content. Data-modifying CTEs run whether or not the
   * final select reads them, all on the locked row's values. The version's blob comes along, so
   * StartProcessing can hand a small version's bytes to the worker without a ReadContent call.
   */
  private readonly startShape = queryShape(
    () => this.db,
    2,
    (db: Kysely<DocumentsDB>, documentId: string, version: number) =>
      db
        .with("d", (q) =>
          q
            .selectFrom("document as d")
            .leftJoin("processing_outcome as o", (j) =>
              j.onRef("o.document_id", "=", "d.id").on("o.version", "=", version),
            )
            // Where the version's bytes are, so the worker can be handed them with the answer.
            .leftJoin("document_version as v", (j) =>
              j.onRef("v.document_id", "=", "d.id").on("v.version", "=", version),
            )
            .select([
              "d.id",
              "d.version as current",
              "d.processing_status",
              "v.sha256 as v_sha256",
              "v.size_bytes as v_size_bytes",
              "o.status as o_status",
              "o.result as o_result",
              "o.failure_reason as o_failure_reason",
              "o.failure_message as o_failure_message",
              "o.created_at as o_created_at",
            ])
            .where("d.id", "=", documentId)
            .where("d.deleted_at", "is", null)
            // The outcome is on the nullable side of the join: only the document's row is locked.
            .forUpdate("d"),
        )
        .with("moved", (q) =>
          q
            .updateTable("document")
            .set({ processing_status: "processing", updated_at: sql<Date>`now()` })
            .where("id", "in", (eb) =>
              eb
                .selectFrom("d")
                .select("d.id")
                .where("d.current", "=", version)
                .where("d.processing_status", "=", "uploaded")
                .where("d.o_status", "is", null),
            )
            .returning(["id", "version", "processing_status"]),
        )
        .with("history", (q) =>
          q
            .insertInto("document_status")
            .columns(["document_id", "version", "status"])
            .expression((eb) =>
              eb.selectFrom("moved").select(["moved.id", "moved.version", "moved.processing_status"]),
            ),
        )
        .with("started", (q) =>
          q
            .updateTable("document_version")
            .set({ started_at: sql<Date>`now()` })
            .where("document_id", "in", (eb) =>
              eb.selectFrom("d").select("d.id").where("d.current", ">=", version).where("d.o_status", "is", null),
            )
            .where("version", "=", version),
        )
        .selectFrom("d")
        .select([
          "d.current",
          "d.o_status",
          "d.o_result",
          "d.o_failure_reason",
          "d.o_failure_message",
          "d.o_created_at",
          "d.v_sha256",
          "d.v_size_bytes",
          sql<boolean>`exists (select 1 from moved)`.as("moved"),
        ]),
  );

  async record(documentId: string, version: number, outcome: NewOutcome): Promise<RecordResult> {
    const failure = outcome.status === "failed" ? outcome : undefined;
    const row = await this.recordShape.first(
      this.db,
      documentId,
      version,
      outcome.status,
      outcome.status === "processed" ? outcome.result : null,
      failure?.reason ?? null,
      failure?.message ?? null,
    );
    if (!row) return { kind: "no_document" };
    if (version > row.current) return { kind: "no_version", current: row.current };
    if (row.i_status !== null) {
      if (row.moved) this.status.committed(documentId);
      return {
        kind: "recorded",
        already: false,
        outcome: {
          document_id: documentId,
          version,
          status: row.i_status,
          // The bytes just sent; not read back from the database.
          result: outcome.status === "processed" ? outcome.result : null,
          failure_reason: row.i_failure_reason,
          failure_message: row.i_failure_message,
          created_at: row.i_created_at!,
        },
      };
    }
    // The first outcome stands. The statement's snapshot predates a report that committed while it
    // waited for the document's lock, so that one is read afresh.
    const first = joinedOutcome(row, documentId, version) ?? (await outcomeIn(this.db, documentId, version));
    if (!first) throw new Error(`the outcome of version ${version} of ${documentId} conflicted but cannot be read`);
    return { kind: "recorded", outcome: first, already: true };
  }

  /**
   * RecordProcessingResult in one statement, with no transaction around it (BEGIN and COMMIT would
   * be two more round trips for every processed version): lock the live document, keep the first
   * outcome of the version, and when this one is new and for the current version move the status
   * (column and history together, as StatusWriter does). The reconciler's give-up, which decides
   * more in between, goes through recordOutcome instead.
   */
  private readonly recordShape = queryShape(
    () => this.db,
    6,
    (
      db: Kysely<DocumentsDB>,
      documentId: string,
      version: number,
      status: string,
      result: Uint8Array | null,
      reason: string | null,
      message: string | null,
    ) =>
      db
        .with("d", (q) =>
          q
            .selectFrom("document")
            .select(["id", "version as current"])
            .where("id", "=", documentId)
            .where("deleted_at", "is", null)
            .forUpdate(),
        )
        .with("ins", (q) =>
          q
            .insertInto("processing_outcome")
            .columns(["document_id", "version", "status", "result", "failure_reason", "failure_message"])
            .expression((eb) =>
              eb
                .selectFrom("d")
                .select([
                  "d.id",
                  sql<number>`cast(${version} as integer)`.as("version"),
                  sql<string>`cast(${status} as text)`.as("status"),
                  sql<Uint8Array | null>`cast(${result} as bytea)`.as("result"),
                  sql<string | null>`cast(${reason} as text)`.as("failure_reason"),
                  sql<string | null>`cast(${message} as text)`.as("failure_message"),
                ])
                .where("d.current", ">=", version),
            )
            .onConflict((oc) => oc.columns(["document_id", "version"]).doNothing())
            .returningAll(),
        )
        .with("moved", (q) =>
          q
            .updateTable("document")
            .set({ processing_status: status, updated_at: sql<Date>`now()` })
            .where("id", "in", (eb) =>
              eb.selectFrom("ins").innerJoin("d", "d.current", "ins.version").select("ins.document_id"),
            )
            .returning(["id", "version", "processing_status"]),
        )
        .with("history", (q) =>
          q
            .insertInto("document_status")
            .columns(["document_id", "version", "status", "failure_reason", "failure_message"])
            .expression((eb) =>
              eb
                .selectFrom("moved")
                .innerJoin("ins", "ins.document_id", "moved.id")
                .select([
                  "moved.id",
                  "moved.version",
                  "moved.processing_status",
                  "ins.failure_reason",
                  "ins.failure_message",
                ]),
            ),
        )
        .selectFrom("d")
        .leftJoin("ins", (j) => j.onTrue())
        .leftJoin("processing_outcome as o", (j) => j.onRef("o.document_id", "=", "d.id").on("o.version", "=", version))
        .select([
          "d.current",
          "ins.status as i_status",
          "ins.failure_reason as i_failure_reason",
          "ins.failure_message as i_failure_message",
          "ins.created_at as i_created_at",
          "o.status as o_status",
          "o.result as o_result",
          "o.failure_reason as o_failure_reason",
          "o.failure_message as o_failure_message",
          "o.created_at as o_created_at",
          sql<boolean>`exists (select 1 from moved)`.as("moved"),
        ]),
  );

  async outcome(documentId: string, version: number): Promise<OutcomeRow | undefined> {
    return outcomeIn(this.db, documentId, version);
  }
}

/**
 * Keeps the first outcome of a version, and moves the document's status when the version is its
 * current one. Call it with the document's row locked (lockLiveDocument), inside
 * StatusWriter.transaction; the worker's reports and the reconciler's give-up both come here.
 */
export async function recordOutcome(
  trx: Kysely<DocumentsDB>,
  setStatus: SetStatus,
  at: { documentId: string; version: number; current: number },
  outcome: NewOutcome,
): Promise<{ kind: "recorded"; outcome: OutcomeRow; already: boolean }> {
  const { documentId, version } = at;
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
    return { kind: "recorded", outcome: first, already: true };
  }
  if (version === at.current) await setStatus({ documentId, version, status: outcome.status, failure });
  return { kind: "recorded", outcome: inserted, already: false };
}
