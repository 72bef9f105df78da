import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { PGlite } from "@electric-sql/pglite";
import { pg_textsearch } from "@electric-sql/pglite-pg_textsearch";
import { vector } from "@electric-sql/pglite-pgvector";
import { HashingEmbedder } from "../embedding/hashing.js";
import { indexLexicon } from "../lexicon/lexicon.js";
import { QuerySyntaxError, understandQuery } from "../query/understand.js";
import type { JudgedSet } from "./generate.js";
import { JUDGED_SET_PATH } from "./generate.js";
import { meanScores, type Scores } from "./metrics.js";

/**
 * Ranks the judged corpus in an embedded PGlite the way the search service will (weighted tsvector
 * with ts_rank_cd, pg_textsearch BM25, pgvector kNN over the hashing embedder, and reciprocal rank
 * fusion in SQL) and scores each ranker. Run: `node --import tsx services/search/relevance/offline-check.ts`.
 * Nothing here is the service's code: it is a yardstick that the set tells rankers apart.
 */

export const RANKERS = [
  "ts_rank_cd, words as typed",
  "ts_rank_cd, expanded",
  "BM25, words as typed",
  "BM25, expanded",
  "vector (hashing)",
  "hybrid: BM25 expanded + vector (RRF)",
  "hybrid: ts_rank_cd expanded + vector (RRF)",
] as const;
export type Ranker = (typeof RANKERS)[number];

const DEPTH = 100;
const NO_LEXICON = indexLexicon([]);

export interface CheckResult {
  scores: Record<Ranker, Scores>;
  /** Per query kind, nDCG@10 of each ranker. */
  byKind: Record<string, Record<Ranker, number>>;
}

export function loadJudgedSet(): JudgedSet {
  return JSON.parse(readFileSync(JUDGED_SET_PATH, "utf8")) as JudgedSet;
}

export async function runOfflineCheck(set: JudgedSet = loadJudgedSet()): Promise<CheckResult> {
  const embedder = new HashingEmbedder();
  const db = await PGlite.create({ extensions: { vector, pg_textsearch } });
  try {
    await db.exec(`
      CREATE EXTENSION IF NOT EXISTS vector;
      CREATE EXTENSION IF NOT EXISTS pg_textsearch;
      CREATE TABLE docs (
        id text PRIMARY KEY,
        title text NOT NULL,
        abstract text NOT NULL,
        body text NOT NULL,
        tsv tsvector GENERATED ALWAYS AS (
          setweight(to_tsvector('english', title), 'A') || setweight(to_tsvector('english', abstract), 'B')
        ) STORED,
        emb vector(${embedder.dimensions})
      );
      CREATE INDEX docs_tsv ON docs USING gin (tsv);
    `);
    const vectors = await embedder.embed(set.documents.map((d) => `${d.title}. ${d.abstract}`));
    for (const [i, d] of set.documents.entries()) {
      await db.query("INSERT INTO docs (id, title, abstract, body, emb) VALUES ($1, $2, $3, $4, $5)", [
        d.id,
        d.title,
        d.abstract,
        `${d.title}. ${d.abstract}`,
        literal(vectors[i]!),
      ]);
    }
    await db.exec(`CREATE INDEX docs_bm25 ON docs USING bm25 (body) WITH (text_config = 'english')`);

    const ids = async (sql: string, params: unknown[]) =>
      (await db.query<{ id: string }>(sql, params)).rows.map((r) => r.id);
    const tsRank = (tsquery: string) =>
      tsquery === ""
        ? Promise.resolve([])
        : ids(
            `SELECT id FROM docs, to_tsquery('english', $1) q WHERE tsv @@ q
             ORDER BY ts_rank_cd(tsv, q) DESC, id LIMIT ${DEPTH}`,
            [tsquery],
          );
    const bm25 = (text: string) =>
      text === ""
        ? Promise.resolve([])
        : ids(
            `SELECT id FROM docs WHERE body <@> to_bm25query($1, 'public.docs_bm25') < 0
             ORDER BY body <@> to_bm25query($1, 'public.docs_bm25'), id LIMIT ${DEPTH}`,
            [text],
          );
    const knn = (v: string) => ids(`SELECT id FROM docs ORDER BY emb <=> $1::vector, id LIMIT ${DEPTH}`, [v]);
    // The fusion as the service does it: two ranked legs, a full outer join, 1/(60 + rank) summed.
    const fused = (lexicalLeg: string, params: unknown[], v: string) =>
      ids(
        `WITH lex AS (${lexicalLeg}),
              vec AS (SELECT id, row_number() OVER (ORDER BY emb <=> $${params.length + 1}::vector, id) AS r
                      FROM docs ORDER BY emb <=> $${params.length + 1}::vector, id LIMIT 200)
         SELECT coalesce(lex.id, vec.id) AS id FROM lex FULL OUTER JOIN vec ON lex.id = vec.id
         ORDER BY coalesce(1.0 / (60 + lex.r), 0) + coalesce(1.0 / (60 + vec.r), 0) DESC, 1 LIMIT ${DEPTH}`,
        [...params, v],
      );
    const bm25Leg = `SELECT id, row_number() OVER (ORDER BY body <@> to_bm25query($1, 'public.docs_bm25'), id) AS r
                     FROM docs WHERE body <@> to_bm25query($1, 'public.docs_bm25') < 0
                     ORDER BY body <@> to_bm25query($1, 'public.docs_bm25'), id LIMIT 200`;
    const tsLeg = `SELECT id, row_number() OVER (ORDER BY ts_rank_cd(tsv, q) DESC, id) AS r
                   FROM docs, to_tsquery('english', $1) q WHERE tsv @@ q
                   ORDER BY ts_rank_cd(tsv, q) DESC, id LIMIT 200`;

    const rankings = Object.fromEntries(RANKERS.map((r) => [r, new Map<string, string[]>()])) as Record<
      Ranker,
      Map<string, string[]>
    >;
    for (const q of set.queries) {
      const typed = understandOrEmpty(q.text, true);
      const expanded = understandOrEmpty(q.text, false);
      const v = literal((await embedder.embed([q.text]))[0]!);
      rankings["ts_rank_cd, words as typed"].set(q.id, await tsRank(typed.tsquery));
      rankings["ts_rank_cd, expanded"].set(q.id, await tsRank(expanded.tsquery));
      rankings["BM25, words as typed"].set(q.id, await bm25(typed.bm25Text));
      rankings["BM25, expanded"].set(q.id, await bm25(expanded.bm25Text));
      rankings["vector (hashing)"].set(q.id, await knn(v));
      rankings["hybrid: BM25 expanded + vector (RRF)"].set(
        q.id,
        expanded.bm25Text ? await fused(bm25Leg, [expanded.bm25Text], v) : await knn(v),
      );
      rankings["hybrid: ts_rank_cd expanded + vector (RRF)"].set(
        q.id,
        expanded.tsquery ? await fused(tsLeg, [expanded.tsquery], v) : await knn(v),
      );
    }

    const scores = Object.fromEntries(RANKERS.map((r) => [r, meanScores(set.queries, rankings[r])])) as Record<
      Ranker,
      Scores
    >;
    const byKind: CheckResult["byKind"] = {};
    for (const kind of [...new Set(set.queries.map((q) => q.kind))]) {
      const qs = set.queries.filter((q) => q.kind === kind);
      byKind[kind] = Object.fromEntries(RANKERS.map((r) => [r, meanScores(qs, rankings[r]).ndcg10])) as Record<
        Ranker,
        number
      >;
    }
    return { scores, byKind };
  } finally {
    await db.close();
  }
}

function understandOrEmpty(text: string, asTyped: boolean) {
  try {
    return understandQuery(text, asTyped ? NO_LEXICON : undefined);
  } catch (err) {
    if (err instanceof QuerySyntaxError) return { tsquery: "", bm25Text: "" };
    throw err;
  }
}

function literal(v: Float32Array): string {
  return `[${Array.from(v).join(",")}]`;
}

export function formatResult(r: CheckResult): string {
  const f = (x: number) => x.toFixed(3);
  const lines = ["| ranker | nDCG@10 | MRR | Recall@50 |", "|---|---:|---:|---:|"];
  for (const name of RANKERS) {
    const s = r.scores[name];
    lines.push(`| ${name} | ${f(s.ndcg10)} | ${f(s.mrr)} | ${f(s.recall50)} |`);
  }
  const kinds = Object.keys(r.byKind);
  lines.push("", `| nDCG@10 by query kind | ${kinds.join(" | ")} |`, `|---|${kinds.map(() => "---:").join("|")}|`);
  for (const name of RANKERS) lines.push(`| ${name} | ${kinds.map((k) => f(r.byKind[k]![name])).join(" | ")} |`);
  return lines.join("\n");
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  console.log(formatResult(await runOfflineCheck()));
}
