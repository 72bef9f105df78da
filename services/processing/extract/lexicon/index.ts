import { ANATOMY } from "./anatomy.js";
import { DISEASES } from "./diseases.js";
import { DRUGS } from "./drugs.js";
import { PROCEDURES } from "./procedures.js";
import type { LexiconTerm } from "./types.js";

export { SPECIALTIES, type EntityType, type LexiconTerm, type Specialty } from "./types.js";
export { ANATOMY, DISEASES, DRUGS, PROCEDURES };

/** The curated medmesh lexicon: every term of every type. */
export const LEXICON: readonly LexiconTerm[] = [...DISEASES, ...DRUGS, ...PROCEDURES, ...ANATOMY];
