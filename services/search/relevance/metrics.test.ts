import { describe, expect, it } from "vitest";
import { meanScores, ndcgAt, recallAt, reciprocalRank, reciprocalRankFusion } from "./metrics.js";

// Judgments for the worked examples: two highly relevant, one partly, one marginal.
const J = { a: 3, b: 2, c: 3, d: 0, e: 1 };

describe("nDCG@k", () => {
  it("is 1 for the ideal order and 0 with nothing relevant ranked", () => {
    expect(ndcgAt(["a", "c", "b", "e"], J)).toBeCloseTo(1, 12);
    expect(ndcgAt(["d", "x", "y"], J)).toBe(0);
    expect(ndcgAt(["a"], {})).toBe(0);
  });

  it("matches a hand computation", () => {
    // DCG of [b, d, a] = 3/log2(2) + 0/log2(3) + 7/log2(4) = 3 + 3.5 = 6.5
    // IDCG of [3, 3, 2, 1] = 7 + 7/log2(3) + 3/2 + 1/log2(5) = 7 + 4.41650 + 1.5 + 0.43068 = 13.34718
    expect(ndcgAt(["b", "d", "a"], J)).toBeCloseTo(6.5 / (7 + 7 / Math.log2(3) + 1.5 + 1 / Math.log2(5)), 12);
    expect(ndcgAt(["b", "d", "a"], J)).toBeCloseTo(0.48699, 5);
  });

  it("cuts at k, in the ranking and in the ideal", () => {
    // k = 1: DCG [e] = 1; IDCG [3] = 7.
    expect(ndcgAt(["e", "a"], J, 1)).toBeCloseTo(1 / 7, 12);
  });

  it("counts a repeated document once", () => {
    expect(ndcgAt(["a", "a", "a"], J)).toBeCloseTo(7 / (7 + 7 / Math.log2(3) + 1.5 + 1 / Math.log2(5)), 12);
  });
});

describe("reciprocal rank and recall", () => {
  it("reciprocal rank is one over the rank of the first relevant document", () => {
    expect(reciprocalRank(["d", "x", "e", "a"], J)).toBeCloseTo(1 / 3, 12);
    expect(reciprocalRank(["d", "x", "e", "a"], J, 2)).toBe(1 / 4);
    expect(reciprocalRank(["d", "x"], J)).toBe(0);
  });

  it("recall@k is the share of relevant documents in the top k", () => {
    expect(recallAt(["a", "d", "e"], J)).toBe(2 / 4);
    expect(recallAt(["d", "a", "b", "c"], J, 2)).toBe(1 / 4);
    expect(recallAt(["a", "b", "c", "e"], J, 50, 3)).toBe(1);
    expect(recallAt(["a"], { d: 0 })).toBe(0);
  });

  it("means over queries, a missing ranking counting as empty", () => {
    const s = meanScores(
      [
        { id: "q1", judgments: { a: 3 } },
        { id: "q2", judgments: { b: 1 } },
      ],
      new Map([["q1", ["x", "a"]]]),
    );
    // q1: nDCG = (7/log2 3)/7, RR = 1/2, recall 1; q2: all 0.
    expect(s.ndcg10).toBeCloseTo(1 / Math.log2(3) / 2, 12);
    expect(s.mrr).toBeCloseTo(0.25, 12);
    expect(s.recall50).toBeCloseTo(0.5, 12);
  });
});

describe("reciprocal rank fusion", () => {
  it("adds 1/(k + rank) across lists", () => {
    // a: 1/61 + 1/62; b: 1/62 + 1/61; c: 1/63; d: 1/63 → ties broken by id.
    expect(
      reciprocalRankFusion([
        ["a", "b", "c"],
        ["b", "a", "d"],
      ]),
    ).toEqual(["a", "b", "c", "d"]);
    expect(reciprocalRankFusion([["a", "b"], ["b"]], 1)).toEqual(["b", "a"]);
  });
});
