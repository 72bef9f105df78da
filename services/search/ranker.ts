import { sql, type Kysely } from "kysely";
import type { Logger } from "../../platform/telemetry/logger.js";

export type RelevanceRanker = "bm25" | "ts_rank_cd";
export type RankerSetting = "auto" | RelevanceRanker;

/** The BM25 index's name in the service's schema; to_bm25query wants it qualified. */
export const BM25_INDEX = "indexed_document_bm25_idx";

/**
 * Decides at start how relevance is ranked. BM25 (pg_textsearch) where the server can load it:
 * it keeps common-term queries fast and weighs rare words up. Otherwise ts_rank_cd, which every
 * PostgreSQL has, scores every matching row and knows nothing of word rarity: a fallback, logged
 * here and named in every response.
 */
export async function chooseRanker(
  db: Kysely<unknown>,
  schema: string,
  setting: RankerSetting,
  log: Logger,
): Promise<RelevanceRanker> {
  if (setting === "ts_rank_cd") {
    log.info("ranking with ts_rank_cd, as configured");
    return "ts_rank_cd";
  }
  try {
    await sql`create extension if not exists pg_textsearch`.execute(db);
    // Built once; on a large index the first start after upgrading takes a while (single-threaded).
    await sql`create index if not exists ${sql.id(BM25_INDEX)} on ${sql.id(schema, "indexed_document")}
              using bm25 (bm25_text) with (text_config = 'english')`.execute(db);
    log.info("ranking with BM25 (pg_textsearch)");
    return "bm25";
  } catch (err) {
    if (setting === "bm25")
      throw new Error(`SEARCH_RANKER=bm25 but pg_textsearch is unusable: ${(err as Error).message}`);
    log.warn("pg_textsearch is not available; ranking with ts_rank_cd, which is slower on common words", {
      error: (err as Error).message,
    });
    return "ts_rank_cd";
  }
}
