/**
 * Ranking quality against graded judgments (0–3), the usual IR measures. Pure: a ranking is a list
 * of document ids, best first; judgments map document ids to grades (absent means 0).
 */
export type Judgments = Readonly<Record<string, number>>;

/**
 * nDCG@k with exponential gain (2^grade − 1) and a log2(rank + 1) discount, against the ideal
 * ordering of all judged documents. 0 when nothing is relevant.
 */
export function ndcgAt(ranking: readonly string[], judgments: Judgments, k = 10): number {
  const gain = (g: number) => 2 ** g - 1;
  const dcg = (grades: number[]) => grades.slice(0, k).reduce((sum, g, i) => sum + gain(g) / Math.log2(i + 2), 0);
  const ideal = dcg(
    Object.values(judgments)
      .filter((g) => g > 0)
      .sort((a, b) => b - a),
  );
  if (ideal === 0) return 0;
  return dcg(unique(ranking).map((id) => judgments[id] ?? 0)) / ideal;
}

/** 1 / the rank of the first document graded at least `minGrade`; 0 if none is ranked. */
export function reciprocalRank(ranking: readonly string[], judgments: Judgments, minGrade = 1): number {
  const at = unique(ranking).findIndex((id) => (judgments[id] ?? 0) >= minGrade);
  return at < 0 ? 0 : 1 / (at + 1);
}

/** Share of the documents graded at least `minGrade` that appear in the first k; 0 when there are none. */
export function recallAt(ranking: readonly string[], judgments: Judgments, k = 50, minGrade = 1): number {
  const relevant = Object.keys(judgments).filter((id) => judgments[id]! >= minGrade);
  if (relevant.length === 0) return 0;
  const top = new Set(unique(ranking).slice(0, k));
  return relevant.filter((id) => top.has(id)).length / relevant.length;
}

export interface Scores {
  ndcg10: number;
  mrr: number;
  recall50: number;
}

/** The three measures averaged over queries (a query without a ranking counts as an empty one). */
export function meanScores(
  queries: readonly { id: string; judgments: Judgments }[],
  rankings: ReadonlyMap<string, readonly string[]>,
): Scores {
  if (queries.length === 0) return { ndcg10: 0, mrr: 0, recall50: 0 };
  let ndcg10 = 0;
  let mrr = 0;
  let recall50 = 0;
  for (const q of queries) {
    const r = rankings.get(q.id) ?? [];
    ndcg10 += ndcgAt(r, q.judgments, 10);
    mrr += reciprocalRank(r, q.judgments);
    recall50 += recallAt(r, q.judgments, 50);
  }
  const n = queries.length;
  return { ndcg10: ndcg10 / n, mrr: mrr / n, recall50: recall50 / n };
}

/** Reciprocal rank fusion: each list adds 1/(k + rank) to a document's score (rank from 1). */
export function reciprocalRankFusion(lists: readonly (readonly string[])[], k = 60): string[] {
  const score = new Map<string, number>();
  for (const list of lists) {
    unique(list).forEach((id, i) => score.set(id, (score.get(id) ?? 0) + 1 / (k + i + 1)));
  }
  return [...score.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map(([id]) => id);
}

/** A ranking lists a document once; a repeat (a bug in a ranker) must not earn gain twice. */
function unique(ids: readonly string[]): string[] {
  return [...new Set(ids)];
}
