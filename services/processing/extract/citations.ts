export type CitationType = "doi" | "pmid" | "pmcid";

export interface Citation {
  type: CitationType;
  /** Normalized identifier: DOIs lower-cased (they are case-insensitive), PMCIDs as "PMC<digits>". */
  id: string;
  /** Offsets of the identifier itself in the text. */
  start: number;
  end: number;
}

// The pattern Crossref recommends for modern DOIs: "10." + a 4-9 digit registrant + "/" + suffix.
const DOI_RE = /\b10\.\d{4,9}\/[-._;()/:A-Za-z0-9]+/g;
// PubMed ids are at most 8 digits today; the label is required because bare numbers are everywhere.
const PMID_RE = /\bPMID\s*:?\s*(\d{1,8})\b/gi;
const PMCID_RE = /\bPMC(\d{4,9})\b/g;

/**
 * Finds DOIs, PMIDs and PMCIDs, each reported once (first occurrence), in order of appearance.
 */
export function extractCitations(text: string): Citation[] {
  const all: Citation[] = [];
  for (const m of text.matchAll(DOI_RE)) {
    const doi = trimDoi(m[0]);
    if (/^10\.\d{4,9}\/./.test(doi))
      all.push({ type: "doi", id: doi.toLowerCase(), start: m.index, end: m.index + doi.length });
  }
  for (const m of text.matchAll(PMID_RE)) {
    const digits = m[1]!;
    const start = m.index + m[0].length - digits.length;
    all.push({ type: "pmid", id: String(Number(digits)), start, end: start + digits.length });
  }
  for (const m of text.matchAll(PMCID_RE)) {
    all.push({ type: "pmcid", id: `PMC${m[1]}`, start: m.index, end: m.index + m[0].length });
  }
  all.sort((a, b) => a.start - b.start);
  const seen = new Set<string>();
  return all.filter((c) => {
    const key = `${c.type}:${c.id}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/**
 * The DOI character set includes sentence punctuation, so a DOI at the end of a sentence or inside
 * parentheses drags that punctuation along. Trailing ".,;:" are never meaningful at the end of a
 * DOI in prose, and a closing parenthesis is kept only when it closes one opened in the DOI itself.
 */
function trimDoi(raw: string): string {
  let doi = raw;
  for (;;) {
    const last = doi.at(-1);
    if (last && ".,;:/".includes(last)) {
      doi = doi.slice(0, -1);
      continue;
    }
    if (last === ")" && count(doi, "(") < count(doi, ")")) {
      doi = doi.slice(0, -1);
      continue;
    }
    return doi;
  }
}

function count(s: string, ch: string): number {
  let n = 0;
  for (const c of s) if (c === ch) n++;
  return n;
}

/** Groups citations by type, keeping order; convenient for storing on a document. */
export function groupCitations(citations: Citation[]): { dois: string[]; pmids: string[]; pmcids: string[] } {
  return {
    dois: citations.filter((c) => c.type === "doi").map((c) => c.id),
    pmids: citations.filter((c) => c.type === "pmid").map((c) => c.id),
    pmcids: citations.filter((c) => c.type === "pmcid").map((c) => c.id),
  };
}
