/**
 * HTML to plain text, on htmlparser2's tokenizer. We need the readable text and its paragraph
 * structure, not a DOM, so we listen to the token stream and keep only a few counters: every token
 * costs constant work and memory, whatever the nesting. (The regular expressions this replaces
 * rescanned the rest of the document for each unclosed `<script>`: 640 KB of them took 12 s.)
 * htmlparser2's own Parser is not used because its open-element stack is an array it unshifts and
 * searches at every tag, which is quadratic on deeply nested or badly closed markup.
 */
import { Tokenizer, type TokenizerCallbacks } from "htmlparser2";

export interface HtmlText {
  text: string;
  title?: string;
}

// Elements whose content is never prose shown to a reader. The tokenizer reads the content of
// script, style, iframe, noembed and noframes as raw text (tags inside are not tags), which is how
// browsers read it; the others hold markup and end at their matching end tag, counted by nesting.
const RAW_DROPPED = new Set(["script", "style", "iframe", "noembed", "noframes"]);
const NESTED_DROPPED = new Set(["noscript", "template", "svg", "math", "object", "nav"]);
// What may stand inside <head>; any other start tag, or visible text, ends an unclosed head, as in
// a browser. Without this a page that never writes </head> would lose its whole body.
const HEAD_CONTENT = new Set([
  "title",
  "meta",
  "link",
  "base",
  "basefont",
  "bgsound",
  "style",
  "script",
  "noscript",
  "template",
]);

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

export function htmlToText(html: string): HtmlText {
  const out: string[] = [];
  // Text since the last tag, in the pieces the tokenizer hands over; decoded as one run, so an
  // entity the tokenizer happened to split still decodes.
  let run: string[] = [];
  let inPre = 0;
  let inHead = false;
  // The raw-text element being skipped (its content arrives as text until its end tag).
  let raw: string | undefined;
  // The markup element being skipped, and how many of that name are open inside it.
  let dropping: string | undefined;
  let dropDepth = 0;
  let titleParts: string[] | undefined;
  let title: string | undefined;
  // Set between a start tag's name and its ">" (attributes are ignored).
  let opening: string | undefined;

  const flush = () => {
    if (!run.length) return;
    const s = run.join("");
    run = [];
    out.push(inPre > 0 ? decodeEntities(s) : decodeEntities(collapse(s)));
  };
  const nameAt = (start: number, end: number) => html.slice(start, end).toLowerCase();

  const startTag = (name: string) => {
    if (dropping !== undefined) {
      if (name === dropping) dropDepth++;
      return;
    }
    if (inHead && !HEAD_CONTENT.has(name) && name !== "head") inHead = false;
    if (name === "title") {
      flush();
      raw = "title";
      if (title === undefined) titleParts = [];
      return;
    }
    if (RAW_DROPPED.has(name)) {
      flush();
      raw = name;
      return;
    }
    if (NESTED_DROPPED.has(name)) {
      flush();
      dropping = name;
      dropDepth = 1;
      return;
    }
    if (name === "head") {
      flush();
      inHead = true;
      return;
    }
    if (name === "body" || name === "html") return;
    structure(name, false);
  };

  const endTag = (name: string) => {
    if (raw !== undefined) {
      // The tokenizer leaves raw text only at the matching end tag.
      if (raw === "title" && titleParts) {
        title = collapse(decodeEntities(titleParts.join(""))).trim() || undefined;
        titleParts = undefined;
      }
      raw = undefined;
      return;
    }
    if (dropping !== undefined) {
      if (name === dropping && --dropDepth === 0) dropping = undefined;
      return;
    }
    if (name === "head") {
      inHead = false;
      return;
    }
    structure(name, true);
  };

  const structure = (name: string, closing: boolean) => {
    if (name === "pre") {
      flush();
      inPre = Math.max(0, inPre + (closing ? -1 : 1));
    }
    if (BLOCK.has(name)) {
      flush();
      out.push("\n\n");
    } else if (LINE.has(name) && !closing) {
      flush();
      out.push("\n"); // a row's end and the next row's start are one break
    } else if (CELL.has(name) && !closing) {
      flush();
      out.push(" ");
    }
  };

  const text = (s: string) => {
    if (raw !== undefined) {
      if (raw === "title") titleParts?.push(s);
      return;
    }
    if (dropping !== undefined) return;
    if (inHead) {
      if (!/\S/.test(s)) return;
      inHead = false;
    }
    run.push(s);
  };
  // Comments, CDATA, doctypes and processing instructions separate words but are never text.
  const separator = () => {
    if (raw === undefined && dropping === undefined && !inHead) run.push(" ");
  };

  const callbacks: TokenizerCallbacks = {
    ontext: (start, end) => text(html.slice(start, end)),
    // Entities stay encoded in the tokens (decodeEntities: false) and are decoded per run below.
    ontextentity: () => undefined,
    onopentagname: (start, end) => {
      opening = nameAt(start, end);
    },
    onopentagend: () => {
      if (opening !== undefined) startTag(opening);
      opening = undefined;
    },
    // <x/> on an HTML element is an ordinary start tag (the tokenizer already treats raw-text ones
    // so); on the foreign elements we drop, it is empty and must not swallow what follows.
    onselfclosingtag: () => {
      if (opening !== undefined && dropping === undefined && (opening === "svg" || opening === "math")) {
        opening = undefined;
        return;
      }
      if (opening !== undefined) startTag(opening);
      opening = undefined;
    },
    onclosetag: (start, end) => endTag(nameAt(start, end)),
    onattribname: () => undefined,
    onattribdata: () => undefined,
    onattribentity: () => undefined,
    onattribend: () => undefined,
    oncomment: separator,
    oncdata: separator,
    ondeclaration: separator,
    onprocessinginstruction: separator,
    onend: () => undefined,
    // Inside svg/math, <style> and <script> hold markup, not raw text; we drop all of it anyway,
    // but this keeps the tokenizer from looking for a </style> that the document never wrote.
    isInForeignContext: () => dropping === "svg" || dropping === "math",
  };
  const tokenizer = new Tokenizer({ decodeEntities: false }, callbacks);
  tokenizer.write(html);
  tokenizer.end();
  flush();
  // An unclosed <title> runs to the end of the document, as in a browser.
  if (titleParts && title === undefined) title = collapse(decodeEntities(titleParts.join(""))).trim() || undefined;

  // Runs of blanks become one first, so that trimming around line breaks only ever looks at one
  // character each side: `[ \t]*\n` would rescan a long run of spaces (inside a <pre>) from every
  // position in it, which is quadratic.
  const joined = out
    .join("")
    .replace(/[ \t]{2,}/g, " ")
    .replace(/[ \t]?\n[ \t]?/g, "\n")
    .replace(/\n{3,}/g, "\n\n")
    .trim();
  return title === undefined ? { text: joined } : { text: joined, title };
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
