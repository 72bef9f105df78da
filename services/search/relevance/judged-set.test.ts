import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { JUDGED_SET_PATH, buildJudgedSet, grade, serialize, type JudgedSet } from "./generate.js";

const committed = JSON.parse(readFileSync(JUDGED_SET_PATH, "utf8")) as JudgedSet;
const words = (s: string) => s.split(/\s+/).filter(Boolean).length;

describe("the judged set", () => {
  it("is exactly what the generator writes (regenerate with the command in generate.ts)", async () => {
    expect(readFileSync(JUDGED_SET_PATH, "utf8")).toBe(await serialize(buildJudgedSet()));
  });

  it("has at least 200 abstracts of 120–200 words, every field filled", () => {
    expect(committed.documents.length).toBeGreaterThanOrEqual(200);
    expect(new Set(committed.documents.map((d) => d.id)).size).toBe(committed.documents.length);
    for (const d of committed.documents) {
      expect([d.id, words(d.abstract) >= 120 && words(d.abstract) <= 200]).toEqual([d.id, true]);
      expect(d.title && d.journal && d.specialty && d.documentType && d.authors.length).toBeTruthy();
      expect(d.publishedOn).toMatch(/^20\d\d-\d\d-\d\d$/);
    }
    expect(new Set(committed.documents.map((d) => d.title)).size).toBeGreaterThan(committed.documents.length * 0.95);
  });

  it("has 40 queries of every kind, each with a fully relevant document", () => {
    expect(committed.queries).toHaveLength(40);
    const kinds = new Map<string, number>();
    for (const q of committed.queries) kinds.set(q.kind, (kinds.get(q.kind) ?? 0) + 1);
    for (const kind of ["abbreviation", "synonym", "brand", "lay", "typo", "phrase"]) {
      expect(kinds.get(kind)).toBeGreaterThanOrEqual(5);
    }
    for (const q of committed.queries) expect([q.id, Object.values(q.judgments).includes(3)]).toEqual([q.id, true]);
  });

  it("judges papers by what they are about, so some relevant papers never use the query's words", () => {
    const byId = new Map(committed.documents.map((d) => [d.id, d]));
    const text = (id: string) => `${byId.get(id)!.title} ${byId.get(id)!.abstract}`.toLowerCase();
    for (const [qid, phrase] of [
      ["q09", "myocardial infarction"],
      ["q16", "glucophage"],
      ["q26", "underactive thyroid"],
    ] as const) {
      const q = committed.queries.find((x) => x.id === qid)!;
      const relevant = Object.keys(q.judgments).filter((id) => q.judgments[id] === 3);
      expect(relevant.some((id) => !text(id).includes(phrase))).toBe(true);
    }
  });
});

describe("grades", () => {
  const facts = {
    condition: "atrial fibrillation",
    mentions: ["heart failure"],
    interventions: ["rivaroxaban"],
    classes: ["anticoagulant"],
    comparators: ["apixaban"],
    outcomes: ["major bleeding"],
  };
  it.each([
    [{ condition: ["atrial fibrillation"], intervention: ["rivaroxaban"] }, 3],
    [{ condition: ["atrial fibrillation"], intervention: ["anticoagulant"] }, 3],
    [{ condition: ["atrial fibrillation"], intervention: ["apixaban"] }, 2],
    [{ condition: ["atrial fibrillation"], intervention: ["catheter ablation"] }, 1],
    [{ condition: ["heart failure"], intervention: ["rivaroxaban"] }, 1],
    [{ condition: ["heart failure"] }, 0],
    [{ condition: ["asthma"], intervention: ["rivaroxaban"] }, 0],
    [{ intervention: ["rivaroxaban"], outcome: ["major bleeding"] }, 3],
    [{ intervention: ["rivaroxaban"], outcome: ["stroke"] }, 2],
    [{ intervention: ["apixaban"] }, 1],
    [{ intervention: ["metformin"] }, 0],
  ])("%j -> %i", (need, expected) => expect(grade(need, facts)).toBe(expected));
});
