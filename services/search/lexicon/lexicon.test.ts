import { describe, expect, it } from "vitest";
import {
  AMBIGUOUS_ABBREVIATIONS,
  CAPITALS_ONLY,
  GROUPS,
  LEXICON,
  LEXICON_INDEX,
  indexLexicon,
  parseConceptRow,
} from "./lexicon.js";
import { matchKey, words } from "./words.js";

describe("the lexicon", () => {
  it("has at least 250 concepts, and some in every group", () => {
    expect(LEXICON.length).toBeGreaterThanOrEqual(250);
    for (const group of GROUPS) expect([group, LEXICON.some((c) => c.group === group)]).toEqual([group, true]);
    expect(LEXICON.filter((c) => c.group === "drug").length).toBeGreaterThanOrEqual(80);
  });

  it("gives each concept a name besides its preferred one", () => {
    const bare = LEXICON.filter((c) => c.forms.length < 2).map((c) => c.preferred);
    expect(bare).toEqual([]);
  });

  it("indexes every form (no form belongs to two concepts: indexing would have thrown)", () => {
    const forms = new Set(LEXICON.flatMap((c) => c.forms.map((f) => matchKey(words(f)))));
    expect(LEXICON_INDEX.byKey.size).toBe(forms.size);
  });

  it("lists no ambiguous abbreviation as a form", () => {
    for (const abbr of Object.keys(AMBIGUOUS_ABBREVIATIONS)) expect(LEXICON_INDEX.byKey.has(abbr)).toBe(false);
  });

  it("marks the capitals-only abbreviations, each a form of some concept", () => {
    for (const abbr of CAPITALS_ONLY) expect([abbr, LEXICON_INDEX.byKey.get(abbr)?.capitalsOnly]).toEqual([abbr, true]);
    expect(LEXICON_INDEX.byKey.get("mi")?.capitalsOnly).toBe(false);
  });

  it("refuses a form claimed by two concepts, or an ambiguous abbreviation", () => {
    const a = parseConceptRow("multiple sclerosis | | | neuro");
    const b = parseConceptRow("mitral stenosis | | MS | card");
    expect(() => indexLexicon([a, b])).toThrow(/"MS" is an ambiguous abbreviation/);
    const c = parseConceptRow("heart failure | | HF | card");
    const d = parseConceptRow("hereditary fructose intolerance | | HF | endo");
    expect(() => indexLexicon([c, d])).toThrow(/"HF" belongs to both "heart failure" and/);
  });

  it("refuses malformed rows", () => {
    expect(() => parseConceptRow("stroke | | neuro")).toThrow(/4 "\|"-separated fields/);
    expect(() => parseConceptRow("stroke | | | brain")).toThrow(/unknown group "brain"/);
  });
});

describe("words", () => {
  it("splits as the english parser does, keeping the possessive s as a word", () => {
    expect(words("Crohn's disease: COVID-19 (SARS-CoV-2)")).toEqual([
      "crohn",
      "s",
      "disease",
      "covid",
      "19",
      "sars",
      "cov",
      "2",
    ]);
    expect(matchKey(["crohn", "s", "disease"])).toBe("crohns disease");
  });
});
