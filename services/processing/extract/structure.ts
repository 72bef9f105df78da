/**
 * Finds the parts of a paper that can be recognised from text alone: the abstract, the author
 * keywords, and the section headings. Input is normalized text (LF line ends).
 */

export interface DocumentStructure {
  abstract?: string;
  keywords: string[];
  /** Standard section names found as headings, lower-case, in order (introduction, methods, …). */
  sections: string[];
  hasReferences: boolean;
}

const MAX_ABSTRACT_CHARS = 5000;
const MAX_KEYWORDS = 30;
const MAX_KEYWORD_CHARS = 80;

// Section names as they appear in headings, mapped to one name each.
const SECTION_NAMES: [RegExp, string][] = [
  [/^(?:introduction|background)$/, "introduction"],
  [/^(?:methods?|materials and methods|patients and methods|methodology|study design)$/, "methods"],
  [/^(?:results?|findings)$/, "results"],
  [/^discussion$/, "discussion"],
  [/^(?:conclusions?|concluding remarks|summary)$/, "conclusion"],
  [/^(?:references|bibliography|literature cited|works cited)$/, "references"],
  [/^(?:acknowledg(?:e)?ments?)$/, "acknowledgements"],
  [/^(?:limitations)$/, "limitations"],
];

const NUMBERING = /^(?:(?:\d{1,2}(?:\.\d{1,2})*|[IVX]{1,4})[.)]?\s+)/;

/** A heading line: short, no sentence punctuation at the end, optionally numbered "1." or "II.". */
function headingName(line: string): string | undefined {
  const t = line.trim();
  if (t.length === 0 || t.length > 60 || /[.,;]$/.test(t)) return undefined;
  const name = t.replace(NUMBERING, "").replace(/:$/, "").trim().toLowerCase();
  for (const [re, canonical] of SECTION_NAMES) if (re.test(name)) return canonical;
  return undefined;
}

// "Abstract" alone on its line, or "Abstract:" / "ABSTRACT" followed by the text on the same line.
// A sentence that merely begins with the word ("Abstract reasoning was…") is neither.
const ABSTRACT_ALONE = /^\s*(?:abstract|summary)\s*:?\s*$/i;
const ABSTRACT_INLINE = /^\s*(?:[Aa]bstract\s*[:.\u2014\u2013-]|ABSTRACT\b)\s*(.*)$/;
const MAX_ABSTRACT_PARAGRAPHS = 3;
const KEYWORDS_LINE = /^\s*(?:key\s*-?\s*words?|index terms)\s*[:.\u2014\u2013-]\s*(.*)$/i;
const KEYWORDS_HEADING = /^\s*(?:key\s*-?\s*words?|index terms)\s*$/i;
// Labels that open the paragraphs of a structured abstract ("Background: …", "Methods: …").
const STRUCTURED_LABEL = /^\s*(?:background|objectives?|aims?|purpose|context|introduction)\s*[:.]/i;

export function detectStructure(text: string): DocumentStructure {
  const lines = text.split("\n");
  const sections: string[] = [];
  for (const line of lines) {
    const h = headingName(line);
    if (h && !sections.includes(h)) sections.push(h);
  }
  const result: DocumentStructure = {
    keywords: findKeywords(lines),
    sections,
    hasReferences: sections.includes("references"),
  };
  const abstract = findAbstract(lines);
  if (abstract) result.abstract = abstract;
  return result;
}

/**
 * The abstract runs from an "Abstract" heading (alone on its line, or followed by the text) to the
 * next heading: a keywords line, a numbered heading, or a standard section name on its own line.
 * In a structured abstract, whose first paragraph is labelled "Background:", those inline labels
 * are part of the abstract and only a bare heading line ends it.
 */
function findAbstract(lines: string[]): string | undefined {
  let startIdx = -1;
  let first = "";
  for (let i = 0; i < lines.length && startIdx < 0; i++) {
    if (ABSTRACT_ALONE.test(lines[i]!)) startIdx = i;
    else {
      const m = ABSTRACT_INLINE.exec(lines[i]!);
      if (m) {
        startIdx = i;
        first = m[1]!.trim();
      }
    }
  }
  if (startIdx < 0) return undefined;

  const body: string[] = first ? [first] : [];
  let structured = STRUCTURED_LABEL.test(first);
  let paragraphs = body.length;
  let inParagraph = body.length > 0;
  for (let i = startIdx + 1; i < lines.length; i++) {
    const line = lines[i]!;
    const bare = line.trim();
    if (KEYWORDS_LINE.test(line) || KEYWORDS_HEADING.test(line)) break;
    const isNumberedHeading = NUMBERING.test(bare) && bare.length < 60 && !/[.,;]$/.test(bare);
    if (headingName(line) || isNumberedHeading) break;
    if (bare === "") {
      inParagraph = false;
      if (body.length > 0) body.push("");
      continue;
    }
    if (!inParagraph) {
      if (paragraphs === 0 && STRUCTURED_LABEL.test(bare)) structured = true;
      // Unlabelled prose rarely runs past a few paragraphs; beyond that we are in the body text.
      if (!structured && paragraphs >= MAX_ABSTRACT_PARAGRAPHS) break;
      paragraphs++;
      inParagraph = true;
    }
    body.push(line);
    if (body.join("\n").length > MAX_ABSTRACT_CHARS) break;
  }
  const abstract = body
    .join("\n")
    .trim()
    .replace(/(\p{Ll})-\n(?=\p{Ll})/gu, "$1") // words hyphenated across PDF line breaks
    .split(/\n\s*\n/)
    .map((p) => p.replace(/\s*\n\s*/g, " ").trim())
    .join("\n\n")
    .slice(0, MAX_ABSTRACT_CHARS)
    .trim();
  return abstract.length >= 20 ? abstract : undefined;
}

/** "Keywords: a; b; c" (or "Key words", "Index terms"), possibly continuing on the next line. */
function findKeywords(lines: string[]): string[] {
  for (let i = 0; i < lines.length; i++) {
    let raw: string | undefined;
    const inline = KEYWORDS_LINE.exec(lines[i]!);
    if (inline) raw = inline[1]!;
    else if (KEYWORDS_HEADING.test(lines[i]!)) raw = "";
    if (raw === undefined) continue;
    // Wrapped keyword lists continue until a blank line or a heading.
    for (let j = i + 1; j < lines.length && j <= i + 3; j++) {
      const next = lines[j]!.trim();
      if (next === "" || headingName(next) || NUMBERING.test(next)) {
        if (next === "" && raw.trim() === "") continue;
        break;
      }
      raw += ` ${next}`;
    }
    const separator = /[;·•|]/.test(raw) ? /[;·•|]/ : /,/;
    const out: string[] = [];
    for (const part of raw.split(separator)) {
      const k = part.trim().replace(/\.$/, "").trim();
      if (k && k.length <= MAX_KEYWORD_CHARS && !out.some((o) => o.toLowerCase() === k.toLowerCase())) out.push(k);
      if (out.length >= MAX_KEYWORDS) break;
    }
    if (out.length > 0) return out;
  }
  return [];
}
