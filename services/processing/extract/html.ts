/**
 * HTML to plain text without a DOM. We need the readable text and its paragraph structure, not a
 * faithful parse, so a tag scanner is enough and keeps the worker free of a heavy dependency.
 */

export interface HtmlText {
  text: string;
  title?: string;
}

// Elements whose content is never prose shown to a reader.
const DROPPED = ["script", "style", "noscript", "template", "svg", "math", "iframe", "object", "nav", "head"];
const DROPPED_RE = new RegExp(`<(${DROPPED.join("|")})\\b[^>]*>[\\s\\S]*?</\\1\\s*>`, "gi");

// Elements that start a new paragraph when opened or closed.
const BLOCK = new Set([
  "address",
  "article",
  "aside",
  "blockquote",
  "caption",
  "dd",
  "details",
  "div",
  "dl",
  "dt",
  "figcaption",
  "figure",
  "footer",
  "form",
  "h1",
  "h2",
  "h3",
  "h4",
  "h5",
  "h6",
  "header",
  "hr",
  "li",
  "main",
  "ol",
  "p",
  "pre",
  "section",
  "summary",
  "table",
  "ul",
  "fieldset",
  "legend",
]);
const LINE = new Set(["br", "tr"]);
const CELL = new Set(["td", "th"]);

// A start or end tag, with attribute values quoted either way (so a ">" inside quotes is not the end).
const TAG_RE = /<(\/?)([a-zA-Z][a-zA-Z0-9:-]*)((?:\s+[^\s"'>/=]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'>]+))?)*)\s*\/?>/g;

export function htmlToText(html: string): HtmlText {
  const titleMatch = /<title\b[^>]*>([\s\S]*?)<\/title\s*>/i.exec(html);
  const title = titleMatch ? collapse(decodeEntities(titleMatch[1]!)).trim() || undefined : undefined;

  let src = html
    .replace(/<!--[\s\S]*?(?:-->|$)/g, " ")
    .replace(/<!\[CDATA\[[\s\S]*?\]\]>/g, " ")
    .replace(/<![^>]*>|<\?[^>]*>/g, " ");
  // Repeated because a dropped element can hide inside another one (a <style> inside an <svg>).
  for (let prev = ""; prev !== src;) {
    prev = src;
    src = src.replace(DROPPED_RE, " ");
  }

  const out: string[] = [];
  let inPre = 0;
  let last = 0;
  const emitText = (raw: string) => {
    if (!raw) return;
    out.push(inPre > 0 ? decodeEntities(raw) : decodeEntities(collapse(raw)));
  };
  for (const m of src.matchAll(TAG_RE)) {
    emitText(src.slice(last, m.index));
    last = m.index + m[0].length;
    const closing = m[1] === "/";
    const name = m[2]!.toLowerCase();
    if (name === "pre") inPre = Math.max(0, inPre + (closing ? -1 : 1));
    if (BLOCK.has(name)) out.push("\n\n");
    else if (LINE.has(name) && !closing)
      out.push("\n"); // a row's end and the next row's start are one break
    else if (CELL.has(name) && !closing) out.push(" ");
  }
  emitText(src.slice(last));

  const text = out
    .join("")
    .replace(/[ \t]*\n[ \t]*/g, "\n")
    .replace(/\n{3,}/g, "\n\n")
    .replace(/[ \t]{2,}/g, " ")
    .trim();
  return title === undefined ? { text } : { text, title };
}

function collapse(s: string): string {
  return s.replace(/\s+/g, " ");
}

// The named references that turn up in articles and clinical pages; the rest pass through as written.
const NAMED: Record<string, string> = {
  amp: "&",
  lt: "<",
  gt: ">",
  quot: '"',
  apos: "'",
  nbsp: "\u00a0",
  shy: "",
  ndash: "\u2013",
  mdash: "\u2014",
  hellip: "\u2026",
  bull: "\u2022",
  middot: "\u00b7",
  lsquo: "\u2018",
  rsquo: "\u2019",
  sbquo: "\u201a",
  ldquo: "\u201c",
  rdquo: "\u201d",
  bdquo: "\u201e",
  laquo: "\u00ab",
  raquo: "\u00bb",
  lsaquo: "\u2039",
  rsaquo: "\u203a",
  prime: "\u2032",
  Prime: "\u2033",
  copy: "\u00a9",
  reg: "\u00ae",
  trade: "\u2122",
  sect: "\u00a7",
  para: "\u00b6",
  dagger: "\u2020",
  Dagger: "\u2021",
  deg: "\u00b0",
  plusmn: "\u00b1",
  times: "\u00d7",
  divide: "\u00f7",
  micro: "\u00b5",
  minus: "\u2212",
  le: "\u2264",
  ge: "\u2265",
  ne: "\u2260",
  asymp: "\u2248",
  equiv: "\u2261",
  infin: "\u221e",
  sum: "\u2211",
  larr: "\u2190",
  rarr: "\u2192",
  uarr: "\u2191",
  darr: "\u2193",
  harr: "\u2194",
  rArr: "\u21d2",
  frac12: "\u00bd",
  frac14: "\u00bc",
  frac34: "\u00be",
  sup1: "\u00b9",
  sup2: "\u00b2",
  sup3: "\u00b3",
  permil: "\u2030",
  percnt: "%",
  num: "#",
  excl: "!",
  quest: "?",
  colon: ":",
  semi: ";",
  comma: ",",
  period: ".",
  lpar: "(",
  rpar: ")",
  lsqb: "[",
  rsqb: "]",
  sol: "/",
  bsol: "\\",
  ast: "*",
  plus: "+",
  equals: "=",
  euro: "\u20ac",
  pound: "\u00a3",
  yen: "\u00a5",
  cent: "\u00a2",
  iexcl: "\u00a1",
  iquest: "\u00bf",
  alpha: "\u03b1",
  beta: "\u03b2",
  gamma: "\u03b3",
  delta: "\u03b4",
  epsilon: "\u03b5",
  zeta: "\u03b6",
  eta: "\u03b7",
  theta: "\u03b8",
  iota: "\u03b9",
  kappa: "\u03ba",
  lambda: "\u03bb",
  mu: "\u03bc",
  nu: "\u03bd",
  xi: "\u03be",
  omicron: "\u03bf",
  pi: "\u03c0",
  rho: "\u03c1",
  sigma: "\u03c3",
  tau: "\u03c4",
  upsilon: "\u03c5",
  phi: "\u03c6",
  chi: "\u03c7",
  psi: "\u03c8",
  omega: "\u03c9",
  Alpha: "\u0391",
  Beta: "\u0392",
  Gamma: "\u0393",
  Delta: "\u0394",
  Theta: "\u0398",
  Lambda: "\u039b",
  Pi: "\u03a0",
  Sigma: "\u03a3",
  Phi: "\u03a6",
  Psi: "\u03a8",
  Omega: "\u03a9",
  auml: "\u00e4",
  ouml: "\u00f6",
  uuml: "\u00fc",
  Auml: "\u00c4",
  Ouml: "\u00d6",
  Uuml: "\u00dc",
  szlig: "\u00df",
  eacute: "\u00e9",
  egrave: "\u00e8",
  ecirc: "\u00ea",
  euml: "\u00eb",
  Eacute: "\u00c9",
  aacute: "\u00e1",
  agrave: "\u00e0",
  acirc: "\u00e2",
  atilde: "\u00e3",
  aring: "\u00e5",
  aelig: "\u00e6",
  ccedil: "\u00e7",
  iacute: "\u00ed",
  igrave: "\u00ec",
  icirc: "\u00ee",
  iuml: "\u00ef",
  ntilde: "\u00f1",
  oacute: "\u00f3",
  ograve: "\u00f2",
  ocirc: "\u00f4",
  otilde: "\u00f5",
  oslash: "\u00f8",
  uacute: "\u00fa",
  ugrave: "\u00f9",
  ucirc: "\u00fb",
  yacute: "\u00fd",
  yuml: "\u00ff",
  Ccedil: "\u00c7",
  Ntilde: "\u00d1",
  Oslash: "\u00d8",
  thinsp: "\u2009",
  ensp: "\u2002",
  emsp: "\u2003",
  zwj: "\u200d",
  zwnj: "\u200c",
  lrm: "",
  rlm: "",
};

export function decodeEntities(s: string): string {
  return s.replace(/&(?:#(\d{1,7})|#[xX]([0-9a-fA-F]{1,6})|([a-zA-Z][a-zA-Z0-9]{1,31}));/g, (whole, dec, hex, name) => {
    if (name !== undefined) return NAMED[name] ?? whole;
    const cp = dec !== undefined ? Number.parseInt(dec, 10) : Number.parseInt(hex, 16);
    // Surrogates, NUL and out-of-range code points are not characters; the HTML spec substitutes U+FFFD.
    if (cp === 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return "\ufffd";
    return String.fromCodePoint(cp);
  });
}
