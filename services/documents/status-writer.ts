import { sql, type Kysely } from "kysely";
import type { StatusFeed } from "./status-feed.js";
import type { DocumentsDB } from "./tables.js";

export interface StatusChange {
  documentId: string;
  version: number;
  status: string;
  failure?: { reason: string; message: string };
}

/** Moves a document to a status within the transaction it was handed by StatusWriter.transaction. */
export type SetStatus = (change: StatusChange) => Promise<void>;

/**
 * The only way a document's processing_status changes. The column and the history that
 * WatchDocument replays are written together, and this replica's watchers are woken only once
 * the transaction has committed: woken earlier they would read the history before the change is
 * visible, and a rolled-back change must wake nobody.
 */
export class StatusWriter {
  constructor(
    private readonly db: Kysely<DocumentsDB>,
    private readonly feed: StatusFeed,
  ) {}

  /** Runs `work` in one transaction; `setStatus` is how it changes a status. */
  async transaction<T>(work: (trx: Kysely<DocumentsDB>, setStatus: SetStatus) => Promise<T>): Promise<T> {
    const changed = new Set<string>();
    const result = await this.db.transaction().execute((trx) =>
      work(trx, async (change) => {
        await write(trx, change);
        changed.add(change.documentId);
      }),
    );
    for (const id of changed) this.feed.notify(id);
    return result;
  }
}

async function write(trx: Kysely<DocumentsDB>, change: StatusChange): Promise<void> {
  await trx
    .updateTable("document")
    .set({ processing_status: change.status, updated_at: sql<Date>`now()` })
    .where("id", "=", change.documentId)
    .execute();
  await trx
    .insertInto("document_status")
    .values({
      document_id: change.documentId,
      version: change.version,
      status: change.status,
      failure_reason: change.failure?.reason ?? null,
      failure_message: change.failure?.message ?? null,
    })
    .execute();
}
