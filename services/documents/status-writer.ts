import { sql, type Kysely } from "kysely";
import { queryShape } from "../../platform/db/query-shape.js";
import type { StatusFeed } from "./status-feed.js";
import { documentColumns, type DocumentRow, type DocumentsDB } from "./tables.js";

export interface StatusChange {
  documentId: string;
  version: number;
  status: string;
  failure?: { reason: string; message: string };
}

/** The document's new current content, written with the status change that a new version brings. */
export interface CurrentContent {
  version: number;
  size_bytes: number;
  mime_type: string;
}

/** Moves a document to a status within the transaction it was handed by StatusWriter.transaction. */
export interface SetStatus {
  (change: StatusChange): Promise<void>;
  /** Also makes `content` the document's current content; resolves to the document as it now is. */
  (change: StatusChange, content: CurrentContent): Promise<DocumentRow>;
}

/**
 * The only way a document's processing_status changes. The column and the history that
 * WatchDocument replays are written together, and this replica's watchers are woken only once
 * the transaction has committed: woken earlier they would read the history before the change is
 * visible, and a rolled-back change must wake nobody.
 *
 * Column and history go in one statement (the update as a CTE beside the insert): every change
 * of every document passes here, and on the embedded database a round trip costs more than the
 * statement itself.
 */
export class StatusWriter {
  private readonly move = queryShape(
    () => this.db,
    5,
    (
      db: Kysely<DocumentsDB>,
      id: string,
      version: number,
      status: string,
      reason: string | null,
      message: string | null,
    ) =>
      db
        .with("moved", (q) =>
          q
            .updateTable("document")
            .set({ processing_status: status, updated_at: sql<Date>`now()` })
            .where("id", "=", id)
            .returning("id"),
        )
        .insertInto("document_status")
        .values({ document_id: id, version, status, failure_reason: reason, failure_message: message }),
  );

  private readonly moveWithContent = queryShape(
    () => this.db,
    5,
    (db: Kysely<DocumentsDB>, id: string, version: number, status: string, size: number, mime: string) =>
      db
        .with("moved", (q) =>
          q
            .updateTable("document")
            .set({
              processing_status: status,
              updated_at: sql<Date>`now()`,
              version,
              size_bytes: size,
              mime_type: mime,
            })
            .where("id", "=", id)
            .returning(documentColumns),
        )
        .with("history", (q) =>
          q
            .insertInto("document_status")
            .values({ document_id: id, version, status, failure_reason: null, failure_message: null })
            .returning("seq"),
        )
        .selectFrom("moved")
        .selectAll(),
  );

  private readonly advanceShape = queryShape(
    () => this.db,
    4,
    (db: Kysely<DocumentsDB>, id: string, version: number, from: string, to: string) =>
      db
        .with("moved", (q) =>
          q
            .updateTable("document")
            .set({ processing_status: to, updated_at: sql<Date>`now()` })
            .where("id", "=", id)
            .where("deleted_at", "is", null)
            .where("version", "=", version)
            .where("processing_status", "=", from)
            .returning(["id", "version", "processing_status"]),
        )
        .with("history", (q) =>
          q
            .insertInto("document_status")
            .columns(["document_id", "version", "status"])
            .expression((eb) => eb.selectFrom("moved").select(["id", "version", "processing_status"]))
            .returning("seq"),
        )
        // The document as the statement found it: no row means it is gone.
        .selectFrom("document")
        .select((eb) => eb.selectFrom("moved").select(eb.fn.countAll<number>().as("n")).as("moved"))
        .where("id", "=", id)
        .where("deleted_at", "is", null),
  );

  constructor(
    private readonly db: Kysely<DocumentsDB>,
    private readonly feed: StatusFeed,
  ) {}

  /**
   * For a status change made by one statement of its own outside `transaction` (written the same
   * way, column and history together): wakes the document's watchers once that statement is done.
   */
  committed(documentId: string): void {
    this.feed.notify(documentId);
  }

  /**
   * Moves a live document's `version` from `from` to `to` when it is there now, column and history
   * in one statement and no transaction around it (the update's own row lock orders it against
   * any other change, whose WHERE is checked again on the row as that change left it). The
   * watchers are woken when it moved.
   */
  async advance(
    documentId: string,
    version: number,
    from: string,
    to: string,
  ): Promise<"moved" | "unchanged" | "no_document"> {
    const found = await this.advanceShape.first(this.db, documentId, version, from, to);
    if (!found) return "no_document";
    if (Number(found.moved) === 0) return "unchanged";
    this.feed.notify(documentId);
    return "moved";
  }

  /** Runs `work` in one transaction; `setStatus` is how it changes a status. */
  async transaction<T>(work: (trx: Kysely<DocumentsDB>, setStatus: SetStatus) => Promise<T>): Promise<T> {
    const changed = new Set<string>();
    const result = await this.db.transaction().execute((trx) => {
      const setStatus = async (change: StatusChange, content?: CurrentContent) => {
        let row: DocumentRow | undefined;
        if (content) {
          if (content.version !== change.version) throw new Error("a status change names the content's own version");
          row = (await this.moveWithContent.first(
            trx,
            change.documentId,
            change.version,
            change.status,
            content.size_bytes,
            content.mime_type,
          )) as DocumentRow | undefined;
          if (!row) throw new Error(`document ${change.documentId} vanished inside its own transaction`);
        } else {
          await this.move.execute(
            trx,
            change.documentId,
            change.version,
            change.status,
            change.failure?.reason ?? null,
            change.failure?.message ?? null,
          );
        }
        changed.add(change.documentId);
        return row;
      };
      return work(trx, setStatus as SetStatus);
    });
    for (const id of changed) this.feed.notify(id);
    return result;
  }
}
