/**
 * Web query syntax, turned into what the index needs: a tsquery for matching, words for BM25
 * ranking, and what a user should see of how the query was read.
 *
 * This is the minimal reader (no lexicon, no expansion); the query-understanding work replaces
 * this file with the full one behind the same exports.
 */
export interface UnderstoodQuery {
  /** Trimmed, whitespace collapsed, lower-cased; the cache and analytics key. */
  normalized: string;
  /**
   * Input for to_tsquery('english', $1): AND of groups; synonyms OR-ed in a group; phrases
   * a <-> b; exclusions !x. "" when nothing searchable.
   */
  tsquery: string;
  /** Words for to_bm25query (expansions included, exclusions left out), space separated. */
  bm25Text: string;
  /** Shown to the user. */
  expansions: { term: string; expandedTo: string[] }[];
  phrases: string[];
  excluded: string[];
  /** Distinct lower-case words typed outside phrases, for did-you-mean. */
  words: string[];
}

/** A query that cannot be read as written; the message is for the person who typed it. */
export class QuerySyntaxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "QuerySyntaxError";
  }
}

/** Letters and digits only: nothing that to_tsquery could read as an operator survives. */
function lexemes(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
}

/** One term of the tsquery: a single lexeme, or a phrase of several in order. */
function term(parts: string[]): string {
  const quoted = parts.map((p) => `'${p}'`);
  return quoted.length === 1 ? quoted[0]! : `(${quoted.join(" <-> ")})`;
}

interface Token {
  text: string;
  quoted: boolean;
  negated: boolean;
}

function tokenize(raw: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < raw.length) {
    const c = raw[i]!;
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    let negated = false;
    if (c === "-" && i + 1 < raw.length && !/\s/.test(raw[i + 1]!)) {
      negated = true;
      i++;
    }
    if (raw[i] === '"') {
      const close = raw.indexOf('"', i + 1);
      if (close < 0) throw new QuerySyntaxError("the query has a quotation mark that is not closed");
      tokens.push({ text: raw.slice(i + 1, close), quoted: true, negated });
      i = close + 1;
      continue;
    }
    let end = i;
    while (end < raw.length && !/\s/.test(raw[end]!) && raw[end] !== '"') end++;
    tokens.push({ text: raw.slice(i, end), quoted: false, negated });
    i = end;
  }
  return tokens;
}

export function understandQuery(raw: string): UnderstoodQuery {
  const normalized = raw.trim().replace(/\s+/g, " ").toLowerCase();
  const groups: string[][] = [];
  const exclusions: string[] = [];
  const phrases: string[] = [];
  const excluded: string[] = [];
  const words = new Set<string>();
  const bm25 = new Set<string>();
  let orPending = false;

  for (const token of tokenize(raw)) {
    if (!token.quoted && !token.negated && token.text === "OR") {
      // OR between two terms joins them into one group; leading or doubled ORs mean nothing.
      orPending = groups.length > 0;
      continue;
    }
    const parts = lexemes(token.text);
    if (parts.length === 0) continue;
    const t = term(parts);
    if (token.negated) {
      exclusions.push(`!${t}`);
      excluded.push(parts.join(" "));
      orPending = false;
      continue;
    }
    if (token.quoted) phrases.push(parts.join(" "));
    else for (const p of parts) words.add(p);
    for (const p of parts) bm25.add(p);
    if (orPending) groups[groups.length - 1]!.push(t);
    else groups.push([t]);
    orPending = false;
  }

  // Exclusions alone match nothing worth showing: with no positive term there is no query.
  const positive = groups.map((g) => (g.length === 1 ? g[0]! : `(${g.join(" | ")})`));
  const tsquery = positive.length === 0 ? "" : [...positive, ...exclusions].join(" & ");
  return {
    normalized,
    tsquery,
    bm25Text: [...bm25].join(" "),
    expansions: [],
    phrases,
    excluded,
    words: [...words],
  };
}
