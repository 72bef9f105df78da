import { CONCEPT_ROWS } from "./concepts.js";
import { matchKey, words, type Word } from "./words.js";

export const GROUPS = [
  "card",
  "endo",
  "onc",
  "neuro",
  "id",
  "pulm",
  "neph",
  "psych",
  "peds",
  "gi",
  "rheum",
  "other",
  "drug",
  "lab",
  "proc",
] as const;
export type Group = (typeof GROUPS)[number];

export interface Concept {
  preferred: string;
  /** Every name of the concept, the preferred one first: synonyms, lay terms, brands, abbreviations. */
  forms: string[];
  group: Group;
}

/**
 * Abbreviations with several common medical meanings and no dominant one. They are never expanded
 * (the word is searched as typed) and no concept may list them: guessing "MS" as multiple sclerosis
 * would hide every mitral stenosis paper from someone who meant that.
 */
export const AMBIGUOUS_ABBREVIATIONS: Readonly<Record<string, readonly string[]>> = {
  ms: ["multiple sclerosis", "mitral stenosis", "morphine sulfate"],
  pe: ["pulmonary embolism", "pleural effusion", "physical examination"],
  pt: ["prothrombin time", "physical therapy", "patient"],
  ra: ["rheumatoid arthritis", "right atrium", "room air"],
  ca: ["cancer", "carcinoma", "calcium"],
  cp: ["chest pain", "cerebral palsy"],
  pd: ["Parkinson disease", "peritoneal dialysis", "progressive disease"],
  ad: ["Alzheimer disease", "atopic dermatitis", "autosomal dominant"],
  ed: ["erectile dysfunction", "emergency department"],
  dm: ["diabetes mellitus", "dermatomyositis"],
  mr: ["mitral regurgitation", "magnetic resonance"],
  hd: ["hemodialysis", "Huntington disease"],
  icd: ["implantable cardioverter defibrillator", "International Classification of Diseases"],
  cin: ["contrast induced nephropathy", "cervical intraepithelial neoplasia"],
  ppd: ["postpartum depression", "purified protein derivative"],
  bpd: ["bronchopulmonary dysplasia", "borderline personality disorder"],
  gbs: ["Guillain Barre syndrome", "group B streptococcus"],
  rt: ["radiotherapy", "reverse transcription", "respiratory therapy"],
  asd: ["autism spectrum disorder", "atrial septal defect"],
  acr: ["albumin creatinine ratio", "American College of Rheumatology"],
};

/**
 * Abbreviations that are also ordinary English words: expanded only when typed in capitals ("ALL"
 * is leukaemia, "all" is not), and never added as an alternative to someone else's query, because
 * the index is lower-case and would match the everyday word.
 */
export const CAPITALS_ONLY: ReadonlySet<string> = new Set([
  "all",
  "aids",
  "us",
  "sob",
  "cap",
  "cad",
  "pad",
  "pet",
  "gad",
  "ua",
  "cf",
  "hai",
  "lp",
  "tg",
  "uc",
  "ida",
  "echo",
]);

export function parseConceptRow(row: string): Concept {
  const fields = row.split("|").map((f) => f.trim());
  if (fields.length !== 4 || !fields[0]) throw new Error(`lexicon row must have 4 "|"-separated fields: ${row}`);
  const group = fields[3] as Group;
  if (!GROUPS.includes(group)) throw new Error(`unknown group "${fields[3]}" in lexicon row: ${row}`);
  const list = (f: string) =>
    f
      .split(";")
      .map((s) => s.trim())
      .filter(Boolean);
  const forms = [fields[0], ...list(fields[1]!), ...list(fields[2]!)];
  return { preferred: fields[0], forms, group };
}

export const LEXICON: readonly Concept[] = CONCEPT_ROWS.map(parseConceptRow);

export interface FormEntry {
  concept: Concept;
  /** The form's words, lower-case. */
  words: string[];
  capitalsOnly: boolean;
}

export interface LexiconIndex {
  /** By matchKey of the form's words. */
  byKey: ReadonlyMap<string, FormEntry>;
  /** The most words any form has: how far greedy matching looks ahead. */
  longest: number;
}

/** Throws on a form claimed by two concepts or an ambiguous abbreviation listed as a form. */
export function indexLexicon(concepts: readonly Concept[]): LexiconIndex {
  const byKey = new Map<string, FormEntry>();
  let longest = 1;
  for (const concept of concepts) {
    for (const form of concept.forms) {
      const ws = words(form);
      if (ws.length === 0) throw new Error(`lexicon form "${form}" of "${concept.preferred}" has no words`);
      const key = matchKey(ws);
      if (AMBIGUOUS_ABBREVIATIONS[key]) {
        throw new Error(`"${form}" is an ambiguous abbreviation and cannot be a form of "${concept.preferred}"`);
      }
      const prior = byKey.get(key);
      if (prior && prior.concept !== concept) {
        throw new Error(`"${form}" belongs to both "${prior.concept.preferred}" and "${concept.preferred}"`);
      }
      if (prior) continue;
      byKey.set(key, { concept, words: ws, capitalsOnly: ws.length === 1 && CAPITALS_ONLY.has(key) });
      longest = Math.max(longest, ws.length);
    }
  }
  return { byKey, longest };
}

export const LEXICON_INDEX: LexiconIndex = indexLexicon(LEXICON);

/**
 * The longest form starting at `start` (greedy matching takes it and moves past it). A plain plural
 * of the last word falls back to the singular ("heart attacks"); a capitals-only abbreviation counts
 * only as typed in capitals ("ALL" is leukaemia, "all" is a word).
 */
export function longestMatch(
  run: readonly Word[],
  start: number,
  lexicon: LexiconIndex = LEXICON_INDEX,
): { entry: FormEntry; length: number } | undefined {
  for (let n = Math.min(lexicon.longest, run.length - start); n >= 1; n--) {
    const slice = run.slice(start, start + n);
    const texts = slice.map((w) => w.text);
    const entry = lexicon.byKey.get(matchKey(texts)) ?? lexicon.byKey.get(singular(texts));
    if (!entry) continue;
    if (entry.capitalsOnly && slice[0]!.typed !== slice[0]!.typed.toUpperCase()) continue;
    return { entry, length: n };
  }
  return undefined;
}

function singular(texts: string[]): string {
  const last = texts[texts.length - 1]!;
  if (last.length <= 4 || !last.endsWith("s") || last.endsWith("ss")) return "";
  return matchKey([...texts.slice(0, -1), last.slice(0, -1)]);
}
