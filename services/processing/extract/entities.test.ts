import { describe, expect, it } from "vitest";
import {
  EntityMatcher,
  findEntities,
  foldWord,
  LEXICON,
  SPECIALTIES,
  summarizeEntities,
  type LexiconTerm,
} from "./index.js";

const canon = (text: string) => findEntities(text).map((e) => e.canonical);

describe("lexicon", () => {
  it("holds at least 400 terms across all four types", () => {
    expect(LEXICON.length).toBeGreaterThanOrEqual(400);
    const byType = new Map<string, number>();
    for (const t of LEXICON) byType.set(t.type, (byType.get(t.type) ?? 0) + 1);
    for (const type of ["disease", "drug", "procedure", "anatomy"]) expect(byType.get(type)).toBeGreaterThanOrEqual(75);
  });

  it("every term has a canonical name, at least one known specialty, and no empty synonyms", () => {
    for (const t of LEXICON) {
      expect(t.canonical.trim(), JSON.stringify(t)).toBe(t.canonical);
      expect(t.specialties.length, t.canonical).toBeGreaterThan(0);
      for (const s of t.specialties) expect(SPECIALTIES).toContain(s);
      for (const s of [...t.synonyms, ...t.abbreviations]) expect(s.trim().length, t.canonical).toBeGreaterThan(0);
    }
  });

  it("no spelling (after folding) and no abbreviation belongs to two different terms", () => {
    const owner = new Map<string, string>();
    const key = (s: string) => [...s.matchAll(/[\p{L}\p{N}]+/gu)].map((m) => foldWord(m[0])).join(" ");
    for (const t of LEXICON) {
      const forms = new Set([...[t.canonical, ...t.synonyms].map(key), ...t.abbreviations.map((a) => `abbr:${a}`)]);
      for (const f of forms) {
        const prev = owner.get(f);
        expect(
          prev === undefined || prev === `${t.type}:${t.canonical}`,
          `${f} is claimed by ${prev} and ${t.canonical}`,
        ).toBe(true);
        owner.set(f, `${t.type}:${t.canonical}`);
      }
    }
  });

  it("has no short abbreviation that is a common English word in capitals", () => {
    const words = [
      "ALL",
      "AS",
      "IT",
      "IS",
      "ON",
      "OR",
      "IN",
      "AT",
      "BE",
      "DO",
      "GO",
      "NO",
      "SO",
      "US",
      "WE",
      "AN",
      "CAN",
      "MAY",
      "HE",
      "FIT",
      "AID",
    ];
    for (const t of LEXICON) for (const a of t.abbreviations) expect(words, `${a} (${t.canonical})`).not.toContain(a);
  });

  it("includes the classic abbreviations", () => {
    const abbr = (a: string) => LEXICON.find((t) => t.abbreviations.includes(a))?.canonical;
    expect(abbr("MI")).toBe("myocardial infarction");
    expect(abbr("HTN")).toBe("hypertension");
    expect(abbr("T2DM")).toBe("type 2 diabetes mellitus");
    expect(abbr("CABG")).toBe("coronary artery bypass grafting");
    expect(abbr("NSAID")).toBe("nonsteroidal anti-inflammatory drug");
    expect(abbr("COPD")).toBe("chronic obstructive pulmonary disease");
  });
});

describe("entity matcher", () => {
  it("reports text, canonical name, type and exact character offsets", () => {
    const text = "History: Myocardial Infarction in 2019.";
    const [m] = findEntities(text);
    expect(m).toEqual({
      text: "Myocardial Infarction",
      canonical: "myocardial infarction",
      type: "disease",
      start: 9,
      end: 30,
      confidence: 0.95,
      matchedBy: "canonical",
    });
    expect(text.slice(m!.start, m!.end)).toBe(m!.text);
  });

  it("matches full names case-insensitively", () => {
    expect(canon("HYPERTENSION, Hypertension and hypertension")).toEqual([
      "hypertension",
      "hypertension",
      "hypertension",
    ]);
  });

  it("matches whole words only", () => {
    expect(canon("prehypertension and hypertensions-like")).toEqual(["hypertension"]);
    expect(canon("The COPDX trial")).toEqual([]);
    expect(canon("heartfelt thanks")).toEqual([]);
  });

  it("prefers the longest term: 'heart failure with preserved ejection fraction' over 'heart failure' over 'heart'", () => {
    const ms = findEntities("heart failure with preserved ejection fraction; heart failure; heart");
    expect(ms.map((m) => m.canonical)).toEqual([
      "heart failure with preserved ejection fraction",
      "heart failure",
      "heart",
    ]);
    expect(ms.map((m) => m.type)).toEqual(["disease", "disease", "anatomy"]);
  });

  it("never returns overlapping matches", () => {
    const ms = findEntities(
      "acute myocardial infarction after coronary artery bypass grafting of the left anterior descending artery",
    );
    for (let i = 1; i < ms.length; i++) expect(ms[i]!.start).toBeGreaterThanOrEqual(ms[i - 1]!.end);
    expect(ms.map((m) => m.canonical)).toEqual([
      "myocardial infarction",
      "coronary artery bypass grafting",
      "left anterior descending artery",
    ]);
  });

  it("matches short abbreviations only in their exact case: MI but not mi or Mi", () => {
    expect(canon("MI, mi, Mi")).toEqual(["myocardial infarction"]);
    expect(canon("CAD and cad; PAD and pad")).toEqual(["coronary artery disease", "peripheral artery disease"]);
  });

  it("matches long abbreviations in any case", () => {
    expect(canon("sglt2i and SGLT2i")).toEqual(["SGLT2 inhibitor", "SGLT2 inhibitor"]);
  });

  it("gives abbreviations lower confidence than names, two-letter ones lowest, and boosts those spelled out in the text", () => {
    const alone = findEntities("HTN and MI noted.");
    expect(alone.map((m) => [m.text, m.confidence, m.matchedBy])).toEqual([
      ["HTN", 0.7, "abbreviation"],
      ["MI", 0.6, "abbreviation"],
    ]);
    const defined = findEntities("Hypertension (HTN) was common. HTN persisted.");
    expect(defined.map((m) => m.confidence)).toEqual([0.95, 0.9, 0.9]);
    expect(findEntities("sglt2i")[0]!.confidence).toBe(0.75);
    expect(findEntities("heart attack")[0]).toMatchObject({ matchedBy: "synonym", confidence: 0.9 });
  });

  it("matches terms across hyphens, apostrophes, a single line break and British spellings", () => {
    expect(canon("beta-blocker")).toEqual(["beta blocker"]);
    expect(canon("Parkinson's disease")).toEqual(["Parkinson disease"]);
    expect(canon("chronic kidney\ndisease")).toEqual(["chronic kidney disease"]);
    expect(canon("oesophagus, anaemia, haemorrhagic stroke, paediatric tumours of the brain")).toEqual([
      "esophagus",
      "anemia",
      "hemorrhagic stroke",
      "brain",
    ]);
  });

  it("does not join words separated by a blank line or a semicolon", () => {
    expect(canon("chronic kidney\n\ndisease")).toEqual(["kidney"]);
    expect(canon("heart; failure")).toEqual(["heart"]);
  });

  it("matches simple plurals at the end of a term, including abbreviation plurals like NSAIDs", () => {
    expect(canon("statins, NSAIDs, kidney stones, lymph nodes, TIAs")).toEqual([
      "statin",
      "nonsteroidal anti-inflammatory drug",
      "kidney stones",
      "lymph node",
      "transient ischemic attack",
    ]);
  });

  it("handles diacritics and digits inside terms", () => {
    expect(canon("Sjögren syndrome, COVID-19, 5-FU, type 2 diabetes")).toEqual([
      "Sjogren syndrome",
      "COVID-19",
      "fluorouracil",
      "type 2 diabetes mellitus",
    ]);
  });

  it("returns nothing for text without medical terms, and for empty text", () => {
    expect(findEntities("The committee met on Tuesday to discuss the budget.")).toEqual([]);
    expect(findEntities("")).toEqual([]);
  });

  it("works over a custom lexicon", () => {
    const terms: LexiconTerm[] = [
      {
        type: "drug",
        canonical: "examplumab",
        synonyms: ["exa-mab"],
        abbreviations: ["EXM"],
        specialties: ["oncology"],
      },
    ];
    const m = new EntityMatcher(terms);
    expect(m.match("Exa-mab (EXM) or exm or EXAMPLUMAB").map((x) => [x.text, x.matchedBy])).toEqual([
      ["Exa-mab", "synonym"],
      ["EXM", "abbreviation"],
      ["EXAMPLUMAB", "canonical"],
    ]);
  });

  it("summarizeEntities counts occurrences per term with the best confidence and the term's specialties", () => {
    const s = summarizeEntities(findEntities("MI. Myocardial infarction. MI. Asthma."));
    expect(s[0]).toEqual({
      canonical: "myocardial infarction",
      type: "disease",
      count: 3,
      confidence: 0.95,
      specialties: ["cardiology"],
    });
    expect(s[1]).toMatchObject({ canonical: "asthma", count: 1 });
  });

  it("matches a long document quickly enough to be linear (200k words)", () => {
    const text = "Patients with hypertension and type 2 diabetes were given metformin daily. ".repeat(18_000);
    const ms = findEntities(text);
    expect(ms.length).toBe(18_000 * 3);
  });
});
