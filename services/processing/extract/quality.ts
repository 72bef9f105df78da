import type { DocumentStructure } from "./structure.js";

export interface QualityInput {
  wordCount: number;
  structure: DocumentStructure;
  citationCount: number;
  distinctEntities: number;
}

export interface QualityScore {
  /** Weighted sum of the components, in [0, 1], rounded to three decimals. */
  score: number;
  /** Each component in [0, 1] before weighting, so a low score can be explained. */
  components: Record<keyof typeof WEIGHTS, number>;
}

/** The weights sum to 1; README.md explains each component. */
export const WEIGHTS = {
  length: 0.2,
  abstract: 0.2,
  keywords: 0.05,
  citations: 0.15,
  references: 0.05,
  structure: 0.2,
  entityDensity: 0.15,
} as const;

const FULL_LENGTH_WORDS = 3000;
const MIN_WORDS = 50;
const FULL_ABSTRACT_WORDS = 50;
const FULL_CITATIONS = 10;
const CORE_SECTIONS = ["introduction", "methods", "results", "discussion", "conclusion"];
const FULL_SECTIONS = 4;
const FULL_DENSITY = 15; // distinct medical terms per 1000 words in a dense clinical paper

/**
 * How much a document looks like a complete, citable medical paper, as opposed to a note, a stub or
 * a page of boilerplate. It measures form, not scientific merit.
 */
export function scoreQuality(q: QualityInput): QualityScore {
  const words = (s: string) => s.split(/\s+/).filter(Boolean).length;
  const abstractWords = q.structure.abstract ? words(q.structure.abstract) : 0;
  const core = q.structure.sections.filter((s) => CORE_SECTIONS.includes(s)).length;
  const density = q.wordCount > 0 ? q.distinctEntities / Math.max(1, q.wordCount / 1000) : 0;

  const components = {
    length: q.wordCount < MIN_WORDS ? 0 : Math.min(1, q.wordCount / FULL_LENGTH_WORDS),
    abstract: abstractWords === 0 ? 0 : abstractWords >= FULL_ABSTRACT_WORDS ? 1 : 0.5,
    keywords: q.structure.keywords.length > 0 ? 1 : 0,
    citations: Math.min(1, q.citationCount / FULL_CITATIONS),
    references: q.structure.hasReferences ? 1 : 0,
    structure: Math.min(1, core / FULL_SECTIONS),
    entityDensity: Math.min(1, density / FULL_DENSITY),
  };
  let score = 0;
  for (const [k, w] of Object.entries(WEIGHTS) as [keyof typeof WEIGHTS, number][]) score += w * components[k];
  const round = (n: number) => Math.round(n * 1000) / 1000;
  for (const k of Object.keys(components) as (keyof typeof components)[]) components[k] = round(components[k]);
  return { score: round(Math.min(1, Math.max(0, score))), components };
}
