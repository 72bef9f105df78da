/**
 * Words as PostgreSQL's english text-search parser will see them, so that what query understanding
 * and the lexicon match is what to_tsvector indexed: letters, digits and combining marks in runs;
 * everything else (punctuation, tsquery operators, hyphens, apostrophes) separates words. An
 * apostrophe's "s" stays a word of its own because to_tsvector gives it a position too (a phrase
 * "crohn <-> s <-> disease" then matches "Crohn's disease").
 */
const WORD = /[\p{L}\p{N}\p{M}]+/gu;

export interface Word {
  /** Lower-case, as it goes into a tsquery. */
  text: string;
  /** As typed, for rules that depend on capitals. */
  typed: string;
}

export function splitWords(text: string): Word[] {
  return [...text.normalize("NFKC").matchAll(WORD)].map((m) => ({ text: m[0].toLowerCase(), typed: m[0] }));
}

export function words(text: string): string[] {
  return splitWords(text).map((w) => w.text);
}

/**
 * The key a run of words is looked up by in the lexicon: possessive "s" joined back to its word
 * ("alzheimer s disease" and "alzheimers disease" meet), single spaces.
 */
export function matchKey(ws: readonly string[]): string {
  return ws.join(" ").replace(/ s(?= |$)/g, "s");
}
