import { sql, type Kysely, type Selectable } from "kysely";
import type { DocumentsDB, UploadSessionTable } from "./tables.js";

/** A session as the handlers see it: `expired` is decided by the database's clock, like `expires_at`. */
export type UploadSessionRow = Selectable<UploadSessionTable> & { expired: boolean };

export type NewUploadSession = Pick<
  Selectable<UploadSessionTable>,
  "id" | "owner" | "document_id" | "new_document" | "filename" | "declared_mime_type" | "expected_sha256" | "size_bytes"
>;

/** The type seen in the first bytes, recorded when it is first known. */
export interface DetectedColumns {
  mime_type: string;
  needs_ocr: boolean;
}

// Every replica compares against the database's clock, so their own clocks need not agree.
const expiresIn = (ttlMs: number) => sql<Date>`now() + make_interval(secs => ${ttlMs / 1000})`;
const expired = sql<boolean>`expires_at <= now()`.as("expired");

/** A user's uploads that still take parts: open and not expired, whether swept yet or not. */
export interface OpenUploads {
  count: number;
  /** The sizes they announced, together. */
  bytes: number;
}

async function openUploads(db: Kysely<DocumentsDB>, owner: string): Promise<OpenUploads> {
  const row = await db
    .selectFrom("upload_session")
    .select([sql<string>`count(*)`.as("count"), sql<string>`coalesce(sum(size_bytes), 0)`.as("bytes")])
    .where("owner", "=", owner)
    .where("state", "=", "open")
    .where(sql<boolean>`expires_at > now()`)
    .executeTakeFirstOrThrow();
  // count is bigint and sum numeric: strings from pg, numbers from PGlite.
  return { count: Number(row.count), bytes: Number(row.bytes) };
}

function insertSession(db: Kysely<DocumentsDB>, s: NewUploadSession, ttlMs: number): Promise<UploadSessionRow> {
  return db
    .insertInto("upload_session")
    .values({
      ...s,
      new_document: s.new_document && JSON.stringify(s.new_document),
      expires_at: expiresIn(ttlMs),
    })
    .returningAll()
    .returning(expired)
    .executeTakeFirstOrThrow();
}

/** The queries of resumable uploads, on the documents schema. */
export class UploadSessionStore {
  constructor(private readonly db: Kysely<DocumentsDB>) {}

  /**
   * Creates the session unless its owner already holds `limits.sessions` open uploads or the new
   * one would take the bytes they announce past `limits.bytes`; then it says what is open. The
   * owner's StartUploads take turns on an advisory lock held to the end of the transaction, on
   * every replica alike, so two of them cannot both count the same last free slot.
   */
  async createWithinLimits(
    s: NewUploadSession,
    ttlMs: number,
    limits: { sessions: number; bytes: number },
  ): Promise<{ created: UploadSessionRow } | { refused: OpenUploads }> {
    return this.db.transaction().execute(async (trx) => {
      await sql`select pg_advisory_xact_lock(hashtext('medmesh.upload_session'), hashtext(${s.owner}))`.execute(trx);
      const open = await openUploads(trx, s.owner);
      if (open.count + 1 > limits.sessions || open.bytes + s.size_bytes > limits.bytes) return { refused: open };
      return { created: await insertSession(trx, s, ttlMs) };
    });
  }

  async find(id: string): Promise<UploadSessionRow | undefined> {
    return this.db.selectFrom("upload_session").selectAll().select(expired).where("id", "=", id).executeTakeFirst();
  }

  /**
   * Moves next_offset from `from` to `to` and pushes the expiry out, only if nobody moved it first
   * and the session is still open and alive; undefined otherwise.
   */
  async advance(
    id: string,
    from: number,
    to: number,
    ttlMs: number,
    detected?: DetectedColumns,
  ): Promise<UploadSessionRow | undefined> {
    return this.db
      .updateTable("upload_session")
      .set({ next_offset: to, expires_at: expiresIn(ttlMs), ...detected })
      .where("id", "=", id)
      .where("next_offset", "=", from)
      .where("state", "=", "open")
      .where(sql<boolean>`expires_at > now()`)
      .returningAll()
      .returning(expired)
      .executeTakeFirst();
  }

  /**
   * Marks an open session completed, inside the transaction that adds the version, so the version
   * and the mark exist together or not at all. When the session is no longer open (another
   * completion won, or it was aborted or swept): undefined, and the caller must roll back.
   */
  async markCompleted(
    trx: Kysely<DocumentsDB>,
    id: string,
    done: { document_id: string; version: number; sha256: string },
    ttlMs: number,
  ): Promise<UploadSessionRow | undefined> {
    return trx
      .updateTable("upload_session")
      .set({ ...done, state: "completed", expires_at: expiresIn(ttlMs) })
      .where("id", "=", id)
      .where("state", "=", "open")
      .returningAll()
      .returning(expired)
      .executeTakeFirst();
  }

  /** Deletes the session whatever its state; true if there was one. */
  async remove(id: string): Promise<boolean> {
    const res = await this.db.deleteFrom("upload_session").where("id", "=", id).executeTakeFirst();
    return Number(res.numDeletedRows) > 0;
  }

  /** Deletes an open session; false if it is gone or completed meanwhile. */
  async removeOpen(id: string): Promise<boolean> {
    const res = await this.db
      .deleteFrom("upload_session")
      .where("id", "=", id)
      .where("state", "=", "open")
      .executeTakeFirst();
    return Number(res.numDeletedRows) > 0;
  }

  /** Deletes up to `limit` expired sessions, open or completed, and says which. */
  async removeExpired(limit: number): Promise<string[]> {
    const rows = await this.db
      .deleteFrom("upload_session")
      .where("id", "in", (eb) =>
        eb
          .selectFrom("upload_session")
          .select("id")
          .where(sql<boolean>`expires_at <= now()`)
          .limit(limit),
      )
      // Re-checked here: a part may have extended the session since the subquery saw it.
      .where(sql<boolean>`expires_at <= now()`)
      .returning("id")
      .execute();
    return rows.map((r) => r.id);
  }

  /** Which of these ids still have a session. */
  async existing(ids: string[]): Promise<Set<string>> {
    if (ids.length === 0) return new Set();
    const rows = await this.db.selectFrom("upload_session").select("id").where("id", "in", ids).execute();
    return new Set(rows.map((r) => r.id));
  }
}
