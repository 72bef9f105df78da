export type EntityType = "disease" | "drug" | "procedure" | "anatomy";

export const SPECIALTIES = [
  "cardiology",
  "oncology",
  "neurology",
  "endocrinology",
  "infectious_disease",
  "pulmonology",
  "nephrology",
  "gastroenterology",
  "psychiatry",
  "pediatrics",
  "rheumatology",
  "hematology",
  "dermatology",
  "obstetrics_gynecology",
  "orthopedics",
  "ophthalmology",
  "urology",
  "otolaryngology",
  "critical_care",
  "surgery",
] as const;

export type Specialty = (typeof SPECIALTIES)[number];

export interface LexiconTerm {
  type: EntityType;
  /** The preferred name, as it should appear in search facets. */
  canonical: string;
  /** Other full names and spellings (British/American, eponyms, older names). */
  synonyms: string[];
  /** Short forms. Short ones match only in their exact case; see entities.ts. */
  abbreviations: string[];
  /** Specialties this term points to, most specific first; used by specialty scoring. */
  specialties: Specialty[];
}

const CODES: Record<string, Specialty> = {
  card: "cardiology",
  onc: "oncology",
  neuro: "neurology",
  endo: "endocrinology",
  id: "infectious_disease",
  pulm: "pulmonology",
  neph: "nephrology",
  gi: "gastroenterology",
  psych: "psychiatry",
  peds: "pediatrics",
  rheum: "rheumatology",
  heme: "hematology",
  derm: "dermatology",
  obgyn: "obstetrics_gynecology",
  ortho: "orthopedics",
  ophth: "ophthalmology",
  uro: "urology",
  ent: "otolaryngology",
  icu: "critical_care",
  surg: "surgery",
};

/**
 * Terms are authored one per line as "canonical | synonyms; … | ABBR; … | codes", which keeps the
 * lists readable and diffable; this turns them into LexiconTerms and rejects malformed lines.
 */
export function parseRows(type: EntityType, rows: string[]): LexiconTerm[] {
  return rows.map((row) => {
    const fields = row.split("|").map((f) => f.trim());
    if (fields.length !== 4 || !fields[0]) {
      throw new Error(`Lexicon row must have 4 "|"-separated fields: ${row}`);
    }
    const list = (f: string) =>
      f
        .split(";")
        .map((s) => s.trim())
        .filter(Boolean);
    const specialties = fields[3]!
      .split(/\s+/)
      .filter(Boolean)
      .map((code) => {
        const s = CODES[code];
        if (!s) throw new Error(`Unknown specialty code "${code}" in lexicon row: ${row}`);
        return s;
      });
    return {
      type,
      canonical: fields[0],
      synonyms: list(fields[1]!),
      abbreviations: list(fields[2]!),
      specialties,
    };
  });
}
