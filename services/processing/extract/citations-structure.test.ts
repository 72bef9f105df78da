import { describe, expect, it } from "vitest";
import { detectStructure, extractCitations, groupCitations } from "./index.js";

const ids = (text: string) => extractCitations(text).map((c) => `${c.type}:${c.id}`);

describe("extractCitations", () => {
  it("finds DOIs in prose, doi: prefixes and doi.org URLs", () => {
    expect(ids("See doi:10.1000/xyz123, https://doi.org/10.1016/S0140-6736(20)30183-5 and 10.12345/abc.def")).toEqual([
      "doi:10.1000/xyz123",
      "doi:10.1016/s0140-6736(20)30183-5",
      "doi:10.12345/abc.def",
    ]);
  });

  it("trims trailing sentence punctuation and an unbalanced closing parenthesis", () => {
    expect(ids("(doi:10.1000/abc.) Also 10.1000/def; and 10.1000/ghi: end. (10.1000/jkl)")).toEqual([
      "doi:10.1000/abc",
      "doi:10.1000/def",
      "doi:10.1000/ghi",
      "doi:10.1000/jkl",
    ]);
  });

  it("keeps balanced parentheses that belong to the DOI", () => {
    expect(ids("10.1002/(SICI)1097-0258(19980715)17:13<1>")).toEqual(["doi:10.1002/(sici)1097-0258(19980715)17:13"]);
  });

  it("rejects DOI look-alikes with too short a registrant or no suffix", () => {
    expect(ids("version 10.1/abc, 10.123/abc, 10.12345/ and 10.12345")).toEqual([]);
  });

  it("finds PMIDs only when labelled, with or without colon, in any case", () => {
    expect(ids("PMID: 12345678, PMID 2345, pmid:00012 and 87654321 alone")).toEqual([
      "pmid:12345678",
      "pmid:2345",
      "pmid:12",
    ]);
  });

  it("finds PMCIDs and ignores PMC followed by too few digits", () => {
    expect(ids("PMCID: PMC1234567 and PMC12 and PMC7654321.")).toEqual(["pmcid:PMC1234567", "pmcid:PMC7654321"]);
  });

  it("reports each identifier once, at its first occurrence, in order of appearance across types", () => {
    const text = "PMID: 111 then 10.1000/A then PMC9999999 then 10.1000/a again and PMID: 111";
    const cs = extractCitations(text);
    expect(cs.map((c) => `${c.type}:${c.id}`)).toEqual(["pmid:111", "doi:10.1000/a", "pmcid:PMC9999999"]);
    expect(cs.map((c) => text.slice(c.start, c.end))).toEqual(["111", "10.1000/A", "PMC9999999"]);
    expect(groupCitations(cs)).toEqual({ dois: ["10.1000/a"], pmids: ["111"], pmcids: ["PMC9999999"] });
  });

  it("returns nothing for text without identifiers", () => {
    expect(extractCitations("No references here, version 1.0/2.")).toEqual([]);
  });
});

describe("detectStructure: abstract", () => {
  it("takes the text after an 'Abstract' heading up to the keywords line, joining wrapped lines", () => {
    const s = detectStructure(
      "Title\n\nAbstract\nFirst line of the\nabstract continues.\n\nKeywords: a; b\n\nIntroduction\nBody.",
    );
    expect(s.abstract).toBe("First line of the abstract continues.");
  });

  it("accepts 'ABSTRACT' and 'Abstract:' with the text on the same line", () => {
    expect(detectStructure("ABSTRACT We studied many patients here.\n1. Introduction").abstract).toBe(
      "We studied many patients here.",
    );
    expect(detectStructure("Abstract: We studied many patients here.\nBackground\nx").abstract).toBe(
      "We studied many patients here.",
    );
  });

  it.each([
    ["Introduction", "Introduction\nText"],
    ["a numbered heading", "1. Introduction\nText"],
    ["a Roman-numbered heading", "II. Methods\nText"],
    ["Background on its own line", "Background\nText"],
    ["Key words (two words)", "Key words: x, y"],
    ["References", "References\n1. X"],
  ])("ends the abstract at %s", (_what, next) => {
    const s = detectStructure(`Abstract\nThe abstract text itself is here.\n${next}`);
    expect(s.abstract).toBe("The abstract text itself is here.");
  });

  it("keeps a structured abstract's labelled paragraphs together", () => {
    const text =
      "Abstract\nBackground: Why we did it was clear.\n\nMethods: How we did it.\n\nResults: What we found.\n\n" +
      "Conclusions: What it means.\n\nKeywords: x";
    expect(detectStructure(text).abstract).toBe(
      "Background: Why we did it was clear.\n\nMethods: How we did it.\n\nResults: What we found.\n\nConclusions: What it means.",
    );
  });

  it("rejoins words hyphenated across line breaks", () => {
    expect(detectStructure("Abstract\nPatients with hyper-\ntension were enrolled.\n\nIntroduction").abstract).toBe(
      "Patients with hypertension were enrolled.",
    );
  });

  it("stops unlabelled prose after three paragraphs when no heading follows", () => {
    const s = detectStructure(
      "Abstract\nOne paragraph here.\n\nTwo paragraph here.\n\nThree paragraph here.\n\nFour is body text.",
    );
    expect(s.abstract).toBe("One paragraph here.\n\nTwo paragraph here.\n\nThree paragraph here.");
  });

  it("finds no abstract when there is no heading, or only a sentence that starts with the word", () => {
    expect(detectStructure("Just a letter about hypertension.").abstract).toBeUndefined();
    expect(detectStructure("Abstract reasoning was impaired in the patient.").abstract).toBeUndefined();
    expect(detectStructure("Abstracts were screened by two reviewers.").abstract).toBeUndefined();
  });

  it("ignores an abstract heading followed by almost nothing", () => {
    expect(detectStructure("Abstract\nN/A\n\nIntroduction").abstract).toBeUndefined();
  });
});

describe("detectStructure: keywords and sections", () => {
  it.each([
    ["Keywords: asthma; COPD; spirometry", ["asthma", "COPD", "spirometry"]],
    ["Key words: asthma, COPD, spirometry.", ["asthma", "COPD", "spirometry"]],
    ["KEYWORDS — asthma · COPD · spirometry", ["asthma", "COPD", "spirometry"]],
    ["Key-words: asthma | COPD", ["asthma", "COPD"]],
    ["Index terms: asthma, asthma, COPD", ["asthma", "COPD"]],
  ])("parses %j", (line, expected) => {
    expect(detectStructure(`Title\n${line}\n\nIntroduction`).keywords).toEqual(expected);
  });

  it("follows a keyword list wrapped onto the next line, and a 'Keywords' heading with the list below", () => {
    expect(
      detectStructure("Keywords: heart failure; atrial\nfibrillation; stroke\n\n1. Introduction").keywords,
    ).toEqual(["heart failure", "atrial fibrillation", "stroke"]);
    expect(detectStructure("Keywords\n\nsepsis; shock\n\nIntroduction").keywords).toEqual(["sepsis", "shock"]);
  });

  it("returns no keywords when there is no keywords line", () => {
    expect(detectStructure("The key word here is care.").keywords).toEqual([]);
  });

  it("lists standard section headings once each, in order, numbered or not", () => {
    const s = detectStructure(
      "1. Introduction\ntext\n2 Materials and Methods\ntext\nRESULTS\ntext\nDiscussion\ntext\nResults\nConclusions\nReferences\n",
    );
    expect(s.sections).toEqual(["introduction", "methods", "results", "discussion", "conclusion", "references"]);
    expect(s.hasReferences).toBe(true);
  });

  it("does not take sentences that mention a section name for headings", () => {
    const s = detectStructure("The results were clear.\nWe discuss the methods below, in the discussion.");
    expect(s.sections).toEqual([]);
    expect(s.hasReferences).toBe(false);
  });
});
