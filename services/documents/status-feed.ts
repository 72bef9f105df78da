import type { Kysely } from "kysely";
import { logger } from "../../platform/telemetry/logger.js";
import type { DocumentsDB, StatusRow } from "./tables.js";

/** What a watcher needs of a document to decide whether its caller may still see it. */
export interface WatchedDocument {
  id: string;
  visibility: string;
  uploaded_by: string;
  deleted: boolean;
}

/** What changed for one document since a watcher last asked. */
export interface FeedUpdate {
  /** Set when who may see the document may have changed (or it was deleted): check again. */
  document?: WatchedDocument;
  /** New entries of the status history, oldest first. */
  statuses: StatusRow[];
}

export interface StatusSubscription {
  /** The changes gathered since the last call; waits for some, or resolves undefined once the signal aborts. */
  next(signal: AbortSignal): Promise<FeedUpdate | undefined>;
  /** The watcher has read the history up to `seq` by itself: the feed need not hand it those again. */
  seen(seq: number): void;
  close(): void;
}

export interface FeedStats {
  /** Polls run so far; each is one query, plus one more only when some history is new. */
  polls: number;
  /** Documents with at least one watcher in this process. */
  documents: number;
  watchers: number;
}

/** Watched ids per query: a bound on statement size, far above what one replica usually watches. */
const IDS_PER_QUERY = 1000;

/** One WatchDocument call's inbox: changes wait here until the call takes them. */
class Watcher {
  /** The highest history seq already handed to (or read by) this watcher. */
  known = 0;
  private pending: FeedUpdate | undefined;
  private wake: (() => void) | undefined;

  deliver(document: WatchedDocument | undefined, statuses: StatusRow[]): void {
    const fresh = statuses.filter((r) => Number(r.seq) > this.known);
    if (!document && fresh.length === 0) return;
    this.pending ??= { statuses: [] };
    if (document) this.pending.document = document;
    if (fresh.length) {
      this.pending.statuses.push(...fresh);
      this.known = Number(fresh[fresh.length - 1]!.seq);
    }
    this.wake?.();
  }

  next(signal: AbortSignal): Promise<FeedUpdate | undefined> {
    const take = () => {
      const update = this.pending;
      this.pending = undefined;
      return signal.aborted ? undefined : update;
    };
    if (this.pending || signal.aborted) return Promise.resolve(take());
    return new Promise((resolve) => {
      const done = () => {
        signal.removeEventListener("abort", done);
        this.wake = undefined;
        resolve(take());
      };
      signal.addEventListener("abort", done, { once: true });
      this.wake = done;
    });
  }
}

/**
 * The one reader of status changes in this process, for every WatchDocument call in it. While
 * anything is watched it polls every `pollMs` with a single query over all watched documents
 * (their newest history seq, visibility and deletion), fetches the new history of those that
 * moved in one more, and fans the rows out to their watchers; watchers themselves never query
 * after their first read. Comparing each document's own newest seq, rather than one global
 * high-water mark, matters: sequence numbers are taken before commit, so across documents a
 * smaller seq can become visible after a larger one, while one document's status writes are
 * serialized by its row lock. A change made in this process (`notify`) polls at once instead
 * of waiting for the timer, so replicas share one database and need no broadcast channel.
 */
export class StatusFeed {
  private readonly watched = new Map<string, Set<Watcher>>();
  /** What the last poll saw of each watched document's access, to tell watchers only of changes. */
  private readonly access = new Map<string, string>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private polls = 0;

  constructor(
    private readonly db: Kysely<DocumentsDB>,
    readonly pollMs = 1000,
  ) {}

  /** A change to this document was committed here (status, visibility, deletion): look now. */
  notify(documentId: string): void {
    if (this.watched.has(documentId)) this.pollNow();
  }

  /** Subscribe before reading the document, so that nothing between the read and the first wait is missed. */
  watch(documentId: string): StatusSubscription {
    const watcher = new Watcher();
    let set = this.watched.get(documentId);
    if (!set) this.watched.set(documentId, (set = new Set()));
    set.add(watcher);
    this.schedule();
    return {
      next: (signal) => watcher.next(signal),
      seen: (seq) => {
        watcher.known = Math.max(watcher.known, seq);
      },
      close: () => {
        set.delete(watcher);
        if (set.size > 0 || this.watched.get(documentId) !== set) return;
        this.watched.delete(documentId);
        this.access.delete(documentId);
        if (this.watched.size === 0) this.idle();
      },
    };
  }

  stats(): FeedStats {
    let watchers = 0;
    for (const set of this.watched.values()) watchers += set.size;
    return { polls: this.polls, documents: this.watched.size, watchers };
  }

  /** No more polls; waits for one under way. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.idle();
    await this.running;
  }

  private idle(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(): void {
    if (this.stopped || this.timer || this.running || this.watched.size === 0) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.pollNow();
    }, this.pollMs);
    this.timer.unref();
  }

  /** Polls now; if a poll is under way, once more right after it, so a change it missed is not left for the timer. */
  private pollNow(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.idle();
    this.running = this.poll()
      .catch((err: unknown) =>
        logger.warn("watching for status changes failed; will try again", { error: (err as Error).message }),
      )
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          this.pollNow();
        } else this.schedule();
      });
  }

  private async poll(): Promise<void> {
    const ids = [...this.watched.keys()];
    for (let i = 0; i < ids.length; i += IDS_PER_QUERY) await this.pollSome(ids.slice(i, i + IDS_PER_QUERY));
  }

  private async pollSome(ids: string[]): Promise<void> {
    this.polls++;
    const rows = await this.db
      .selectFrom("document as d")
      .select(["d.id", "d.visibility", "d.uploaded_by"])
      .select((eb) => [
        eb("d.deleted_at", "is not", null).as("deleted"),
        eb
          .selectFrom("document_status as s")
          .whereRef("s.document_id", "=", "d.id")
          .select((e) => e.fn.max("s.seq").as("seq"))
          .as("last_seq"),
      ])
      .where("d.id", "in", ids)
      .execute();
    const found = new Map(rows.map((r) => [r.id, r]));

    // Which documents have history some watcher lacks, and from where the oldest of those needs it.
    const moved: string[] = [];
    let from = Number.MAX_SAFE_INTEGER;
    for (const id of ids) {
      const lastSeq = Number(found.get(id)?.last_seq ?? 0);
      const watchers = this.watched.get(id);
      if (!watchers) continue;
      const behind = Math.min(...[...watchers].map((w) => w.known));
      if (lastSeq > behind) {
        moved.push(id);
        from = Math.min(from, behind);
      }
    }
    const history = new Map<string, StatusRow[]>();
    if (moved.length > 0) {
      const statuses = await this.db
        .selectFrom("document_status")
        .selectAll()
        .where("document_id", "in", moved)
        .where("seq", ">", from)
        .orderBy("seq")
        .execute();
      for (const row of statuses) {
        const list = history.get(row.document_id) ?? [];
        list.push(row);
        history.set(row.document_id, list);
      }
    }

    for (const id of ids) {
      const watchers = this.watched.get(id);
      if (!watchers) continue; // every watcher left while the query ran
      const row = found.get(id);
      const document: WatchedDocument = row
        ? { id, visibility: row.visibility, uploaded_by: row.uploaded_by, deleted: Boolean(row.deleted) }
        : { id, visibility: "", uploaded_by: "", deleted: true };
      // The first poll of a document always reports its access: a change may have come between
      // a watcher's own read and this poll.
      const stamp = `${document.visibility}|${document.uploaded_by}|${document.deleted}`;
      const accessChanged = this.access.get(id) !== stamp;
      this.access.set(id, stamp);
      const statuses = history.get(id) ?? [];
      for (const w of watchers) w.deliver(accessChanged ? document : undefined, statuses);
    }
  }
}
