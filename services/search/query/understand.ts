import { CAPITALS_ONLY, LEXICON_INDEX, longestMatch, type LexiconIndex } from "../lexicon/lexicon.js";
import { matchKey, splitWords, type Word } from "../lexicon/words.js";

/**
 * Query understanding in the manner of PubMed's automatic term mapping: the web syntax people type
 * (quoted phrases, OR, -exclusion, implicit AND) read into groups of alternatives, and unquoted
 * words mapped to lexicon concepts and searched with every name of the concept, the translation
 * returned so the user sees what was searched.
 */

export interface UnderstoodQuery {
  /** Trimmed, whitespace collapsed, lower-cased except the OR keyword (so "a OR b" and "a or b",
   * which mean different things, do not share a cache entry); the cache and analytics key. */
  normalized: string;
  /** For to_tsquery('english', $1): an AND of groups, alternatives OR-ed inside a group, phrases
   * as a <-> b, exclusions as !x. "" when nothing searchable was typed. */
  tsquery: string;
  /** Words for to_bm25query (expansions included, exclusions left out), space separated. */
  bm25Text: string;
  /** What each recognised term was expanded to, for the user. */
  expansions: { term: string; expandedTo: string[] }[];
  phrases: string[];
  excluded: string[];
  /** Distinct lower-case words typed outside phrases and exclusions, for did-you-mean. */
  words: string[];
}

/** Longest query accepted, in characters (after trimming). */
export const MAX_QUERY_LENGTH = 512;
/** Longest single word: nothing longer is a word anybody searches for, and PostgreSQL refuses
 * lexemes over 2047 bytes. */
export const MAX_WORD_LENGTH = 64;

/** A query that cannot be read; the message is a sentence for the person who typed it. */
export class QuerySyntaxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "QuerySyntaxError";
  }
}

/** One alternative: a word, or several words that must be adjacent. */
type Alternative = string[];

type Item =
  | { kind: "word"; word: Word }
  | { kind: "phrase"; words: string[] }
  | { kind: "exclude"; words: string[] }
  | { kind: "or" }
  /** Where a run of words ends without a term (a "-" with nothing after it, an empty phrase). */
  | { kind: "break" };

type Element = { kind: "unit"; alternatives: Alternative[] } | { kind: "or" } | { kind: "exclude" };

export function understandQuery(raw: string, lexicon: LexiconIndex = LEXICON_INDEX): UnderstoodQuery {
  const trimmed = raw.trim();
  if (trimmed.length > MAX_QUERY_LENGTH) {
    throw new QuerySyntaxError(
      `The query is ${trimmed.length} characters long; shorten it to at most ${MAX_QUERY_LENGTH}.`,
    );
  }
  const items = readItems(trimmed);
  for (const item of items) {
    const ws =
      item.kind === "word" ? [item.word.text] : item.kind === "phrase" || item.kind === "exclude" ? item.words : [];
    const long = ws.find((w) => w.length > MAX_WORD_LENGTH);
    if (long) {
      throw new QuerySyntaxError(
        `The query has a word of ${long.length} characters; words longer than ${MAX_WORD_LENGTH} characters cannot be searched.`,
      );
    }
  }

  const expansions: UnderstoodQuery["expansions"] = [];
  const phrases: string[] = [];
  const excluded: string[] = [];
  const typedWords: string[] = [];
  const elements: Element[] = [];

  let run: Word[] = [];
  const flushRun = () => {
    for (const unit of mapRun(run, lexicon, expansions)) elements.push(unit);
    for (const w of run) typedWords.push(w.text);
    run = [];
  };
  for (const item of items) {
    if (item.kind === "word") {
      run.push(item.word);
      continue;
    }
    flushRun();
    if (item.kind === "phrase") {
      if (item.words.length === 0) continue;
      phrases.push(item.words.join(" "));
      elements.push({ kind: "unit", alternatives: [item.words] });
    } else if (item.kind === "exclude") {
      if (item.words.length === 0) continue;
      excluded.push(item.words.join(" "));
      elements.push({ kind: "exclude" });
    } else if (item.kind === "or") {
      elements.push({ kind: "or" });
    }
  }
  flushRun();

  const groups = orGroups(elements);
  if (groups.length === 0 && excluded.length > 0) {
    throw new QuerySyntaxError(
      `The query only excludes (${excluded.map((e) => `-${e}`).join(" ")}); add a term to search for.`,
    );
  }

  // "mi heart attack" names one concept twice: search it once.
  const distinct = new Map(
    groups.map((g) => [
      g
        .map((alt) => alt.join(" "))
        .sort()
        .join("|"),
      g,
    ]),
  );
  const rendered = [...distinct.values()].map(renderGroup);
  const exclusions = unique(excluded.map((e) => `!${renderAlternative(e.split(" "), true)}`));
  const tsquery = rendered.length === 0 ? "" : [...rendered, ...exclusions].join(" & ");
  const bm25Words = unique(groups.flatMap((g) => g.flatMap((alt) => alt)));

  return {
    normalized: normalize(trimmed),
    tsquery,
    bm25Text: bm25Words.join(" "),
    expansions,
    phrases: unique(phrases),
    excluded: unique(excluded),
    words: unique(typedWords),
  };
}

const KEYWORDS = new Set(["OR", "AND", "NOT"]);

/**
 * Lower-cased, except where case changes the meaning: the keywords, and abbreviations that expand
 * only in capitals ("ALL children" is not "all children").
 */
function normalize(trimmed: string): string {
  return trimmed
    .replace(/[\p{Cc}\p{Cf}]/gu, " ")
    .split(/\s+/)
    .filter(Boolean)
    .map((t) =>
      KEYWORDS.has(t) || splitWords(t).some((w) => CAPITALS_ONLY.has(w.text) && w.typed === w.typed.toUpperCase())
        ? t
        : t.toLowerCase(),
    )
    .join(" ");
}

const SPACE = /\s/u;

/** The query's surface syntax: phrases, exclusions, the OR/AND/NOT keywords and loose words. */
function readItems(q: string): Item[] {
  const items: Item[] = [];
  let negateNext = false;
  let i = 0;
  while (i < q.length) {
    const c = q[i]!;
    if (SPACE.test(c)) {
      i++;
      continue;
    }
    // A chunk: up to whitespace or a quotation mark.
    let j = i;
    while (j < q.length && !SPACE.test(q[j]!) && q[j] !== '"') j++;
    const chunk = q.slice(i, j);
    const atQuote = q[j] === '"';
    const dashes = /^-+/.exec(chunk)?.[0].length ?? 0;

    if (atQuote && (chunk === "" || dashes === chunk.length)) {
      // A phrase, excluded when a "-" (or NOT) stands right before its opening quote.
      const close = q.indexOf('"', j + 1);
      if (close < 0) {
        throw new QuerySyntaxError(
          "The query opens a quoted phrase but never closes it; add the closing quotation mark or remove the opening one.",
        );
      }
      const ws = splitWords(q.slice(j + 1, close)).map((w) => w.text);
      if (dashes > 0 || negateNext) items.push({ kind: "exclude", words: ws });
      else items.push({ kind: "phrase", words: ws });
      negateNext = false;
      i = close + 1;
      continue;
    }
    // Text glued before a quote ("abc"def") reads as a chunk; the quote starts a phrase next turn.
    i = j;
    if (chunk === "OR") {
      items.push({ kind: "or" });
      continue;
    }
    if (chunk === "AND") continue;
    if (chunk === "NOT") {
      negateNext = true;
      continue;
    }
    const ws = splitWords(chunk);
    if (dashes > 0 || negateNext) {
      items.push({ kind: "exclude", words: ws.map((w) => w.text) });
    } else if (ws.length > 0) {
      for (const word of ws) items.push({ kind: "word", word });
    } else {
      // Punctuation alone ("&&", "|"): nothing to search, but it still separates terms.
      items.push({ kind: "break" });
    }
    negateNext = false;
  }
  if (negateNext) throw new QuerySyntaxError("The query ends with NOT; say what to leave out after it.");
  return items;
}

/**
 * Greedy, longest-first lexicon matching over a run of unquoted words. Each match becomes one unit
 * whose alternatives are every name of the concept, the typed form first; other words stay alone.
 */
function mapRun(run: Word[], lexicon: LexiconIndex, expansions: UnderstoodQuery["expansions"]): Element[] {
  const units: Element[] = [];
  let i = 0;
  while (i < run.length) {
    const found = longestMatch(run, i, lexicon);
    if (!found) {
      units.push({ kind: "unit", alternatives: [[run[i]!.text]] });
      i++;
      continue;
    }
    const typed = run.slice(i, i + found.length).map((w) => w.text);
    const alternatives: Alternative[] = [typed];
    const seen = new Set([typed.join(" ")]);
    const expandedTo: string[] = [];
    for (const form of found.entry.concept.forms) {
      const entry = lexicon.byKey.get(matchKey(splitWords(form).map((w) => w.text)));
      if (!entry || entry.capitalsOnly) continue;
      const key = entry.words.join(" ");
      if (seen.has(key)) continue;
      seen.add(key);
      alternatives.push(entry.words);
      expandedTo.push(form);
    }
    if (expandedTo.length > 0) expansions.push({ term: matchKey(typed), expandedTo });
    units.push({ kind: "unit", alternatives });
    i += found.length;
  }
  return units;
}

/** Units joined by OR become one group; every other unit is a group of its own. */
function orGroups(elements: Element[]): Alternative[][] {
  const groups: Alternative[][] = [];
  let joinNext = false;
  for (let k = 0; k < elements.length; k++) {
    const el = elements[k]!;
    if (el.kind === "or") {
      const before = elements[k - 1];
      const after = elements[k + 1];
      if (before?.kind !== "unit" || after?.kind !== "unit") {
        throw new QuerySyntaxError(
          before?.kind === "exclude" || after?.kind === "exclude"
            ? "An excluded term cannot be one side of OR; put the exclusion elsewhere in the query."
            : "OR needs a term on each side, as in: heart attack OR stroke.",
        );
      }
      joinNext = true;
      continue;
    }
    if (el.kind === "exclude") continue;
    if (joinNext) {
      const group = groups[groups.length - 1]!;
      for (const alt of el.alternatives) {
        if (!group.some((g) => g.join(" ") === alt.join(" "))) group.push(alt);
      }
    } else {
      groups.push([...el.alternatives]);
    }
    joinNext = false;
  }
  return groups;
}

function renderAlternative(ws: string[], parenthesise: boolean): string {
  const text = ws.join(" <-> ");
  return parenthesise && ws.length > 1 ? `(${text})` : text;
}

function renderGroup(group: Alternative[]): string {
  if (group.length === 1) return renderAlternative(group[0]!, false);
  return `(${group.map((alt) => renderAlternative(alt, false)).join(" | ")})`;
}

function unique<T>(xs: T[]): T[] {
  return [...new Set(xs)];
}
