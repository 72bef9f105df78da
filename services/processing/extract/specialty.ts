import type { EntitySummary } from "./entities.js";
import { SPECIALTIES, type Specialty } from "./lexicon/index.js";

export interface SpecialtyScore {
  specialty: Specialty;
  /** This specialty's share of all specialty evidence, 0..1. */
  share: number;
}

export interface SpecialtyResult {
  /** Absent when the evidence is too thin or too evenly spread to name one. */
  primary?: Specialty;
  /** The leading specialties, highest first (at most five). */
  ranked: SpecialtyScore[];
}

// Population words say "pediatrics" more reliably than any disease list, and a few adjectives name
// a specialty outright. Matched as whole words, case-insensitively.
const CUES: Partial<Record<Specialty, RegExp>> = {
  pediatrics:
    /\b(?:children|child|childhood|infants?|infancy|neonates?|neonatal|newborns?|paediatric|pediatric|adolescents?|toddlers?|preterm infants?)\b/gi,
  oncology: /\b(?:tumou?rs?|oncolog\w*|chemotherap\w*|malignan\w*|carcinomas?)\b/gi,
  cardiology: /\b(?:cardiac|cardiovascular|cardiolog\w*|coronary)\b/gi,
  neurology: /\b(?:neurolog\w*|neurological|cerebral|neuronal)\b/gi,
  psychiatry: /\b(?:psychiatr\w*|mental health|psychological)\b/gi,
  infectious_disease: /\b(?:infections?|infectious|pathogens?|antimicrobial|bacterial|viral)\b/gi,
  pulmonology: /\b(?:respiratory|pulmonary)\b/gi,
  nephrology: /\b(?:renal|nephrolog\w*)\b/gi,
  endocrinology: /\b(?:endocrin\w*|glycaemic|glycemic|glucose)\b/gi,
  gastroenterology: /\b(?:gastrointestinal|hepatic|intestinal)\b/gi,
  obstetrics_gynecology: /\b(?:pregnan\w*|obstetric\w*|gynaecolog\w*|gynecolog\w*|maternal)\b/gi,
};

const CUE_WEIGHT = 0.4;
const SECONDARY_WEIGHT = 0.5; // a term's second and later specialties count half
const PRIMARY_MIN_SHARE = 0.25;
const PRIMARY_MIN_EVIDENCE = 2;

/**
 * Scores specialties from the entities found (each term lists its specialties) plus cue words in
 * the text. A term counts confidence x (1 + ln count), so repetition helps but cannot swamp
 * breadth; see README.md for the rule that names a primary specialty.
 */
export function detectSpecialty(entities: EntitySummary[], text = ""): SpecialtyResult {
  const raw = new Map<Specialty, number>();
  const add = (s: Specialty, v: number) => raw.set(s, (raw.get(s) ?? 0) + v);

  for (const e of entities) {
    const weight = e.confidence * (1 + Math.log(e.count));
    e.specialties.forEach((s, i) => add(s, i === 0 ? weight : weight * SECONDARY_WEIGHT));
  }
  for (const [specialty, re] of Object.entries(CUES) as [Specialty, RegExp][]) {
    const n = text.match(re)?.length ?? 0;
    if (n > 0) add(specialty, CUE_WEIGHT * (1 + Math.log(n)));
  }

  const total = [...raw.values()].reduce((a, b) => a + b, 0);
  if (total === 0) return { ranked: [] };
  const ranked = [...raw.entries()]
    .map(([specialty, v]) => ({ specialty, share: Math.round((v / total) * 1000) / 1000 }))
    .sort((a, b) => b.share - a.share || SPECIALTIES.indexOf(a.specialty) - SPECIALTIES.indexOf(b.specialty))
    .slice(0, 5);
  const top = ranked[0]!;
  const second = ranked[1];
  const clear = top.share >= PRIMARY_MIN_SHARE && (!second || top.share > second.share);
  return clear && total >= PRIMARY_MIN_EVIDENCE ? { primary: top.specialty, ranked } : { ranked };
}
