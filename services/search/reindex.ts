import type { Client } from "@connectrpc/connect";
import type { Kysely } from "kysely";
import type { DocumentService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import type { ServiceToken } from "../../platform/auth/service-token.js";
import { logger as rootLogger, type Logger } from "../../platform/telemetry/logger.js";
import type { indexer } from "./indexer.js";
import type { IndexStore } from "./store.js";
import type { SearchDB } from "./tables.js";

export interface Reindexer {
  reindex(): Promise<{ indexed: number; removed: number }>;
}

const LIST_PAGE = 100;

/**
 * Rebuilds the index from documents, the source of truth: every live document's current version
 * is read and written again as the events would have written it, and rows whose document is gone
 * are removed. For after a lost index, a changed analyzer, or events that went to the DLQ.
 * Runs one at a time; a second call while one runs waits for it and shares its result.
 */
export function reindexer(deps: {
  db: Kysely<SearchDB>;
  documents: Client<typeof DocumentService>;
  token: ServiceToken;
  store: IndexStore;
  indexing: Pick<ReturnType<typeof indexer>, "actionFor" | "apply">;
  /** Called after rows were written, so the relay publishes their DocumentIndexed. */
  afterWrite?: () => void;
  logger?: Logger;
}): Reindexer {
  const log = (deps.logger ?? rootLogger).child({ component: "reindex" });
  let running: Promise<{ indexed: number; removed: number }> | undefined;

  async function run(): Promise<{ indexed: number; removed: number }> {
    const started = performance.now();
    const live = new Set<string>();
    let indexed = 0;
    let pageToken = "";
    do {
      const page = await deps.documents.listDocuments(
        { pageSize: LIST_PAGE, pageToken },
        { headers: await deps.token.headers() },
      );
      for (const doc of page.documents) {
        live.add(doc.id);
        if (doc.version === 0) continue;
        const action = await deps.indexing.actionFor(doc.id, doc.version);
        await deps.db.transaction().execute((trx) => deps.indexing.apply(trx, action));
        if (action.kind === "upsert") indexed++;
      }
      deps.afterWrite?.();
      pageToken = page.nextPageToken;
    } while (pageToken);
    let removed = 0;
    for (const id of await deps.store.documentIds()) {
      if (live.has(id)) continue;
      await deps.db.transaction().execute((trx) => deps.store.remove(trx, id));
      removed++;
    }
    log.info("reindexed", { indexed, removed, ms: Math.round(performance.now() - started) });
    return { indexed, removed };
  }

  return {
    reindex() {
      running ??= run().finally(() => (running = undefined));
      return running;
    },
  };
}
