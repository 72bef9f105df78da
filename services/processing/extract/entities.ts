import { LEXICON, type EntityType, type LexiconTerm, type Specialty } from "./lexicon/index.js";

export type MatchKind = "canonical" | "synonym" | "abbreviation";

export interface EntityMatch {
  /** The text as it appears in the document. */
  text: string;
  canonical: string;
  type: EntityType;
  /** Character offsets into the analysed text: text === source.slice(start, end). */
  start: number;
  end: number;
  /** 0..1; see README.md ("Entity confidence"). */
  confidence: number;
  matchedBy: MatchKind;
}

export interface EntitySummary {
  canonical: string;
  type: EntityType;
  count: number;
  confidence: number;
  specialties: Specialty[];
}

// Abbreviations up to this many characters collide with ordinary words in other cases ("mi",
// "Pad", "cad"), so they match only as written; longer ones are distinctive in any case.
const CASE_SENSITIVE_MAX = 5;
const EXACT = "\u0001"; // prefixes trie keys that must match case-sensitively

const CONFIDENCE = {
  canonical: 0.95,
  synonym: 0.9,
  abbreviationLong: 0.75,
  abbreviationShort: 0.7,
  abbreviationTwoLetter: 0.6,
  // An abbreviation whose full name also occurs in the document has been introduced by the authors.
  abbreviationDefinedBonus: 0.2,
  abbreviationDefinedMax: 0.9,
};

interface Terminal {
  term: number;
  kind: MatchKind;
  confidence: number;
}

interface TrieNode {
  children: Map<string, TrieNode>;
  terminal?: Terminal;
}

interface Token {
  start: number;
  end: number;
  raw: string;
  folded: string;
}

const TOKEN_RE = /[\p{L}\p{N}]+/gu;
// What may separate the words of one multi-word term: spaces or a single line break (PDF line
// wraps), hyphens, apostrophes, slashes, and the punctuation inside names like "C. difficile" or
// "hand, foot and mouth disease". A blank line ends any term.
const GAP_RE = /^(?:[ \t\-\u2010\u2011\u2013'\u2019/.,]|\n(?!\s*\n))*$/;
const MAX_GAP = 4;

/**
 * Spelling-insensitive key for a word: lower case, no diacritics, and British spellings folded to
 * American ones so "haemorrhage", "oesophagus" and "tumour" meet their lexicon entries. Applied to
 * the lexicon and the text alike, so an over-eager fold can only make two words equal, which the
 * lexicon tests check against.
 */
export function foldWord(word: string): string {
  let w = word.normalize("NFD").replace(/\p{M}/gu, "").toLowerCase();
  if (w.length >= 6) {
    w = w
      .replace(/ae/g, "e")
      .replace(/oe/g, "e")
      .replace(/isation/g, "ization")
      .replace(/our(s?)$/, "or$1");
  }
  return w;
}

function tokenize(text: string): Token[] {
  const out: Token[] = [];
  for (const m of text.matchAll(TOKEN_RE)) {
    out.push({ start: m.index, end: m.index + m[0].length, raw: m[0], folded: foldWord(m[0]) });
  }
  return out;
}

function isShortAbbreviation(abbr: string): boolean {
  return abbr.replace(/[^\p{L}\p{N}]/gu, "").length <= CASE_SENSITIVE_MAX;
}

/** A trie over word keys, built once from the lexicon; matching is a walk from each word. */
export class EntityMatcher {
  private readonly root: TrieNode = { children: new Map() };
  readonly terms: readonly LexiconTerm[];

  constructor(terms: readonly LexiconTerm[]) {
    this.terms = terms;
    terms.forEach((term, index) => {
      this.insert(term.canonical, { term: index, kind: "canonical", confidence: CONFIDENCE.canonical }, false);
      for (const s of term.synonyms) {
        this.insert(s, { term: index, kind: "synonym", confidence: CONFIDENCE.synonym }, false);
      }
      for (const a of term.abbreviations) {
        const short = isShortAbbreviation(a);
        const letters = a.replace(/[^\p{L}\p{N}]/gu, "").length;
        const confidence = !short
          ? CONFIDENCE.abbreviationLong
          : letters <= 2
            ? CONFIDENCE.abbreviationTwoLetter
            : CONFIDENCE.abbreviationShort;
        this.insert(a, { term: index, kind: "abbreviation", confidence }, short);
      }
    });
  }

  private insert(surface: string, terminal: Terminal, exact: boolean): void {
    const words = [...surface.matchAll(TOKEN_RE)].map((m) => (exact ? EXACT + m[0] : foldWord(m[0])));
    if (words.length === 0) return;
    let node = this.root;
    for (const w of words) {
      let next = node.children.get(w);
      if (!next) {
        next = { children: new Map() };
        node.children.set(w, next);
      }
      node = next;
    }
    // The first writer wins, and canonical names are inserted first, so a name beats an alias.
    node.terminal ??= terminal;
  }

  /**
   * Finds lexicon terms in the text: whole words only, the longest term starting at each word,
   * never overlapping, in order of appearance.
   */
  match(text: string): EntityMatch[] {
    const tokens = tokenize(text);
    const found: { first: number; last: number; terminal: Terminal }[] = [];
    for (let i = 0; i < tokens.length;) {
      const hit = this.longestAt(text, tokens, i);
      if (hit) {
        found.push({ first: i, ...hit });
        i = hit.last + 1;
      } else i++;
    }

    const spelledOut = new Set<number>();
    for (const f of found) if (f.terminal.kind !== "abbreviation") spelledOut.add(f.terminal.term);

    return found.map(({ first, last, terminal }) => {
      const term = this.terms[terminal.term]!;
      const start = tokens[first]!.start;
      const end = tokens[last]!.end;
      let confidence = terminal.confidence;
      if (terminal.kind === "abbreviation" && spelledOut.has(terminal.term)) {
        confidence = Math.min(CONFIDENCE.abbreviationDefinedMax, confidence + CONFIDENCE.abbreviationDefinedBonus);
      }
      return {
        text: text.slice(start, end),
        canonical: term.canonical,
        type: term.type,
        start,
        end,
        confidence: Math.round(confidence * 100) / 100,
        matchedBy: terminal.kind,
      };
    });
  }

  private longestAt(text: string, tokens: Token[], i: number): { last: number; terminal: Terminal } | undefined {
    let best: { last: number; terminal: Terminal } | undefined;
    const consider = (last: number, terminal: Terminal | undefined) => {
      if (!terminal) return;
      if (!best || last > best.last || (last === best.last && terminal.confidence > best.terminal.confidence)) {
        best = { last, terminal };
      }
    };
    let frontier: TrieNode[] = [this.root];
    for (let j = i; j < tokens.length && frontier.length > 0; j++) {
      const tok = tokens[j]!;
      if (j > i) {
        const gap = text.slice(tokens[j - 1]!.end, tok.start);
        if (gap.length > MAX_GAP || !GAP_RE.test(gap)) break;
      }
      const next: TrieNode[] = [];
      for (const node of frontier) {
        for (const key of [tok.folded, EXACT + tok.raw]) {
          const child = node.children.get(key);
          if (child) {
            next.push(child);
            consider(j, child.terminal);
          }
        }
        // A plural ends a term ("statins", "NSAIDs") but never continues one.
        for (const key of pluralStems(tok)) consider(j, node.children.get(key)?.terminal);
      }
      frontier = next;
    }
    return best;
  }
}

function pluralStems(tok: Token): string[] {
  const out: string[] = [];
  const raw = tok.raw;
  if (raw.length > 3 && /[^s]s$/.test(tok.folded)) out.push(foldWord(raw.slice(0, -1)));
  // Upper-case abbreviation with a lower-case plural s: "NSAIDs", "MIs", "TIAs".
  if (raw.length >= 3 && /^[\p{Lu}\p{N}][\p{Lu}\p{N}\p{Ll}]*[\p{Lu}\p{N}]s$/u.test(raw))
    out.push(EXACT + raw.slice(0, -1));
  return out;
}

/** One row per distinct term, most frequent first: what search facets and specialty scoring use. */
export function summarizeEntities(matches: EntityMatch[], terms: readonly LexiconTerm[] = LEXICON): EntitySummary[] {
  const byName = new Map<string, LexiconTerm>();
  for (const t of terms) byName.set(`${t.type}:${t.canonical}`, t);
  const rows = new Map<string, EntitySummary>();
  for (const m of matches) {
    const key = `${m.type}:${m.canonical}`;
    const row = rows.get(key);
    if (row) {
      row.count++;
      row.confidence = Math.max(row.confidence, m.confidence);
    } else {
      rows.set(key, {
        canonical: m.canonical,
        type: m.type,
        count: 1,
        confidence: m.confidence,
        specialties: byName.get(key)?.specialties ?? [],
      });
    }
  }
  return [...rows.values()].sort(
    (a, b) => b.count - a.count || b.confidence - a.confidence || a.canonical.localeCompare(b.canonical),
  );
}

let shared: EntityMatcher | undefined;

/** The matcher over the curated lexicon, built on first use (a few milliseconds). */
export function defaultMatcher(): EntityMatcher {
  shared ??= new EntityMatcher(LEXICON);
  return shared;
}

export function findEntities(text: string): EntityMatch[] {
  return defaultMatcher().match(text);
}
