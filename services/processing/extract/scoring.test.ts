import { describe, expect, it } from "vitest";
import {
  detectSpecialty,
  detectStructure,
  findEntities,
  guessLanguage,
  QUALITY_WEIGHTS,
  scoreQuality,
  summarizeEntities,
} from "./index.js";

const specialtyOf = (text: string) => detectSpecialty(summarizeEntities(findEntities(text)), text);

describe("detectSpecialty", () => {
  it.each([
    [
      "cardiology",
      "Atrial fibrillation and heart failure after myocardial infarction were treated with apixaban and a beta blocker.",
    ],
    [
      "oncology",
      "Pembrolizumab after chemotherapy with cisplatin improved survival in metastatic melanoma and breast cancer.",
    ],
    [
      "neurology",
      "Epilepsy, migraine and multiple sclerosis were assessed with EEG and magnetic resonance imaging of the brain.",
    ],
    [
      "endocrinology",
      "Type 2 diabetes was managed with metformin, insulin glargine and semaglutide; hypothyroidism with levothyroxine.",
    ],
    [
      "infectious_disease",
      "Tuberculosis, malaria and HIV infection were treated with isoniazid, artemether-lumefantrine and tenofovir.",
    ],
    [
      "pulmonology",
      "Asthma and COPD exacerbations were managed with salbutamol, tiotropium and pulmonary rehabilitation after spirometry.",
    ],
    [
      "nephrology",
      "Chronic kidney disease progressed to end-stage renal disease requiring hemodialysis; glomerulonephritis was excluded.",
    ],
    [
      "gastroenterology",
      "Crohn disease and ulcerative colitis were assessed by colonoscopy; infliximab was started; the liver was normal.",
    ],
    [
      "psychiatry",
      "Major depressive disorder and generalized anxiety disorder responded to sertraline and cognitive behavioral therapy.",
    ],
    [
      "pediatrics",
      "Bronchiolitis and croup in infants and children: neonatal outcomes in preterm infants and toddlers.",
    ],
  ])("names %s for a text about it", (specialty, text) => {
    const r = specialtyOf(text);
    expect(r.primary).toBe(specialty);
    expect(r.ranked[0]!.specialty).toBe(specialty);
  });

  it("shares sum to at most 1 and are sorted", () => {
    const r = specialtyOf("Hypertension, asthma, epilepsy and psoriasis.");
    const shares = r.ranked.map((s) => s.share);
    expect([...shares].sort((a, b) => b - a)).toEqual(shares);
    expect(shares.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(1.001);
  });

  it("names no primary specialty for text without medical content", () => {
    expect(specialtyOf("The quarterly budget meeting is on Tuesday.")).toEqual({ ranked: [] });
  });

  it("names no primary specialty on a single weak mention", () => {
    expect(specialtyOf("The heart.").primary).toBeUndefined();
  });

  it("names no primary specialty when two specialties tie", () => {
    const r = specialtyOf("Psoriasis. Glaucoma.");
    expect(r.ranked[0]!.share).toBe(r.ranked[1]!.share);
    expect(r.primary).toBeUndefined();
  });
});

describe("scoreQuality", () => {
  const structure = (text: string) => detectStructure(text);

  it("weights sum to exactly 1", () => {
    expect(Object.values(QUALITY_WEIGHTS).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 10);
  });

  it("scores 0 for an empty note and 1 for a document that meets every criterion", () => {
    expect(
      scoreQuality({ wordCount: 10, structure: structure("hi"), citationCount: 0, distinctEntities: 0 }).score,
    ).toBe(0);
    const full = structure(
      `Abstract\n${"word ".repeat(60)}\n\nKeywords: a; b\n\nIntroduction\nx\nMethods\nx\nResults\nx\nDiscussion\nx\nReferences\n`,
    );
    const q = scoreQuality({ wordCount: 4000, structure: full, citationCount: 12, distinctEntities: 80 });
    expect(q.score).toBe(1);
    expect(Object.values(q.components).every((c) => c === 1)).toBe(true);
  });

  it("each component moves the score by its weight", () => {
    const base = { wordCount: 0, structure: structure(""), citationCount: 0, distinctEntities: 0 };
    expect(scoreQuality({ ...base, citationCount: 5 }).score).toBeCloseTo(QUALITY_WEIGHTS.citations * 0.5, 3);
    expect(scoreQuality({ ...base, wordCount: 1500 }).score).toBeCloseTo(QUALITY_WEIGHTS.length * 0.5, 3);
    const short = structure("Abstract\nOnly a short abstract of some twenty-odd characters.\n\nIntroduction");
    expect(scoreQuality({ ...base, structure: short }).components.abstract).toBe(0.5);
  });

  it("stays within [0, 1] for extreme inputs", () => {
    const q = scoreQuality({
      wordCount: 1e9,
      structure: structure("References"),
      citationCount: 1e6,
      distinctEntities: 1e9,
    });
    expect(q.score).toBeGreaterThanOrEqual(0);
    expect(q.score).toBeLessThanOrEqual(1);
  });
});

describe("guessLanguage", () => {
  it.each([
    [
      "en",
      "The patients with hypertension were treated in the clinic and this was the first study of the kind for patients.",
    ],
    [
      "fr",
      "Les patients atteints de la maladie sont traités dans une clinique et le traitement est efficace pour les patients chez qui la maladie est grave.",
    ],
    [
      "de",
      "Die Patienten mit der Krankheit wurden in der Klinik behandelt und die Behandlung ist nicht bei allen Patienten von Nutzen, das ist auf jeden Fall zu beachten.",
    ],
    [
      "es",
      "Los pacientes con la enfermedad fueron tratados en el hospital y el tratamiento fue eficaz para los pacientes que se presentaron con una forma grave del cuadro.",
    ],
  ])("recognises %s", (lang, text) => {
    expect(guessLanguage(text)).toBe(lang);
  });

  it("returns undefined for too little text", () => {
    expect(guessLanguage("Hypertension.")).toBeUndefined();
    expect(guessLanguage("")).toBeUndefined();
  });
});
