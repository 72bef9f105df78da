import { describe, expect, it } from "vitest";
import { formatResult, runOfflineCheck, type CheckResult } from "./offline-check.js";

/**
 * The judged set must tell rankers apart: expansion has to pay off where the words differ from the
 * papers' (abbreviations, synonyms, brands, lay terms), and fusion must not lose what BM25 finds.
 * The figures themselves are recorded in README.md; the service's own test guards them.
 */
describe("the judged set discriminates between rankers (PGlite: tsvector, pg_textsearch BM25, pgvector)", () => {
  let r: CheckResult;

  it("runs every ranker over every query", async () => {
    r = await runOfflineCheck();
    console.log(formatResult(r));
    for (const s of Object.values(r.scores)) expect(s.ndcg10).toBeGreaterThan(0);
  }, 120_000);

  it("BM25 with expansion beats BM25 on the words as typed", () => {
    expect(r.scores["BM25, expanded"].ndcg10).toBeGreaterThan(r.scores["BM25, words as typed"].ndcg10 + 0.1);
    expect(r.scores["BM25, expanded"].recall50).toBeGreaterThan(r.scores["BM25, words as typed"].recall50 + 0.1);
  });

  it("ts_rank_cd with expansion beats ts_rank_cd on the words as typed", () => {
    expect(r.scores["ts_rank_cd, expanded"].ndcg10).toBeGreaterThan(
      r.scores["ts_rank_cd, words as typed"].ndcg10 + 0.1,
    );
  });

  it.each(["abbreviation", "synonym", "brand", "lay"])("expansion pays off on %s queries", (kind) => {
    expect(r.byKind[kind]!["BM25, expanded"]).toBeGreaterThan(r.byKind[kind]!["BM25, words as typed"]);
  });

  it("expansion changes nothing for typos (nothing to map) and no lexical ranker beats the vectors there", () => {
    expect(r.byKind.typo!["BM25, expanded"]).toBe(r.byKind.typo!["BM25, words as typed"]);
    expect(r.byKind.typo!["vector (hashing)"]).toBeGreaterThan(r.byKind.typo!["BM25, expanded"]);
  });

  it("fusing BM25 with the vector leg keeps BM25's recall", () => {
    expect(r.scores["hybrid: BM25 expanded + vector (RRF)"].recall50).toBeGreaterThanOrEqual(
      r.scores["BM25, expanded"].recall50,
    );
  });
});
