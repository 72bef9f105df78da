export type ContentKind = "pdf" | "text" | "html" | "image" | "unknown";

export interface DetectedType {
  mime: string;
  kind: ContentKind;
  /** True when the only route to text is OCR (images); PDFs are decided later, page by page. */
  needsOcr: boolean;
  /** Present for kind "unknown": a sentence a user can act on. */
  reason?: string;
}

/** How many leading bytes callers should pass: enough for every signature and a fair text sample. */
export const SNIFF_BYTES = 4096;

interface Signature {
  bytes: (number | null)[]; // null matches any byte
  offset?: number;
  mime: string;
  kind: ContentKind;
  reason?: string;
}

const ascii = (s: string): number[] => [...s].map((c) => c.charCodeAt(0));

const IMAGES: Signature[] = [
  { bytes: [0x89, ...ascii("PNG"), 0x0d, 0x0a, 0x1a, 0x0a], mime: "image/png", kind: "image" },
  { bytes: [0xff, 0xd8, 0xff], mime: "image/jpeg", kind: "image" },
  { bytes: ascii("GIF87a"), mime: "image/gif", kind: "image" },
  { bytes: ascii("GIF89a"), mime: "image/gif", kind: "image" },
  { bytes: [...ascii("II"), 0x2a, 0x00], mime: "image/tiff", kind: "image" },
  { bytes: [...ascii("MM"), 0x00, 0x2a], mime: "image/tiff", kind: "image" },
  { bytes: [...ascii("RIFF"), null, null, null, null, ...ascii("WEBP")], mime: "image/webp", kind: "image" },
];

// Recognised only to explain the refusal precisely instead of saying "binary".
const REFUSED: Signature[] = [
  {
    bytes: [...ascii("PK"), 0x03, 0x04],
    mime: "application/zip",
    kind: "unknown",
    reason:
      "The file is a ZIP archive (Word, Excel and EPUB files are ZIPs too); only PDF, text, HTML and images are accepted.",
  },
  {
    bytes: [0x7f, ...ascii("ELF")],
    mime: "application/x-executable",
    kind: "unknown",
    reason: "The file is a Linux executable (ELF), not a document.",
  },
  {
    bytes: ascii("MZ"),
    mime: "application/vnd.microsoft.portable-executable",
    kind: "unknown",
    reason: "The file is a Windows executable, not a document.",
  },
  {
    bytes: [0x1f, 0x8b],
    mime: "application/gzip",
    kind: "unknown",
    reason: "The file is gzip-compressed; upload the document inside it instead.",
  },
  {
    bytes: [0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1],
    mime: "application/x-ole-storage",
    kind: "unknown",
    reason: "The file is a legacy Office document (.doc/.xls); save it as PDF and upload that.",
  },
  {
    bytes: [...ascii("7z"), 0xbc, 0xaf, 0x27, 0x1c],
    mime: "application/x-7z-compressed",
    kind: "unknown",
    reason: "The file is a 7-Zip archive, not a document.",
  },
  {
    bytes: ascii("Rar!"),
    mime: "application/vnd.rar",
    kind: "unknown",
    reason: "The file is a RAR archive, not a document.",
  },
];

function matches(b: Uint8Array, sig: Signature): boolean {
  const at = sig.offset ?? 0;
  if (b.length < at + sig.bytes.length) return false;
  return sig.bytes.every((v, i) => v === null || b[at + i] === v);
}

const PDF_MAGIC = ascii("%PDF-");
// Readers accept the header anywhere in the first KiB (some generators prepend junk), so we do too.
const PDF_HEADER_WINDOW = 1024;

function findPdfHeader(b: Uint8Array): boolean {
  const end = Math.min(b.length, PDF_HEADER_WINDOW) - PDF_MAGIC.length;
  for (let i = 0; i <= end; i++) {
    if (PDF_MAGIC.every((v, j) => b[i + j] === v)) return true;
  }
  return false;
}

/**
 * Identifies content by its leading bytes, never by the name or declared type, since both are
 * supplied by the uploader. Pass the first SNIFF_BYTES bytes (fewer is fine for short files).
 */
export function detectContentType(firstBytes: Uint8Array): DetectedType {
  const b = firstBytes;
  if (b.length === 0) {
    return { mime: "application/octet-stream", kind: "unknown", needsOcr: false, reason: "The file is empty." };
  }
  if (findPdfHeader(b)) return { mime: "application/pdf", kind: "pdf", needsOcr: false };
  for (const sig of IMAGES) {
    if (matches(b, sig)) return { mime: sig.mime, kind: "image", needsOcr: true };
  }
  for (const sig of REFUSED) {
    if (matches(b, sig)) return { mime: sig.mime, kind: "unknown", needsOcr: false, reason: sig.reason };
  }

  const text = decodeSample(b);
  if ("reason" in text) {
    return { mime: "application/octet-stream", kind: "unknown", needsOcr: false, reason: text.reason };
  }
  if (looksLikeHtml(text.sample)) {
    return { mime: `text/html; charset=${text.charset}`, kind: "html", needsOcr: false };
  }
  return { mime: `text/plain; charset=${text.charset}`, kind: "text", needsOcr: false };
}

interface TextSample {
  sample: string;
  charset: "utf-8" | "utf-16le" | "utf-16be";
}

/** Decodes the sample as text, or explains why it is not text. */
function decodeSample(b: Uint8Array): TextSample | { reason: string } {
  let charset: TextSample["charset"] = "utf-8";
  let body = b;
  if (b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf) body = b.subarray(3);
  else if (b[0] === 0xff && b[1] === 0xfe) {
    charset = "utf-16le";
    body = b.subarray(2);
  } else if (b[0] === 0xfe && b[1] === 0xff) {
    charset = "utf-16be";
    body = b.subarray(2);
  }

  let sample: string;
  if (charset === "utf-8") {
    if (body.includes(0)) {
      return { reason: "The file is binary (it contains NUL bytes) and matches no supported document format." };
    }
    try {
      sample = new TextDecoder("utf-8", { fatal: true }).decode(body.subarray(0, completeUtf8Length(body)));
    } catch {
      return { reason: "The file is neither a known document format nor valid UTF-8 text." };
    }
  } else {
    // UTF-16 code units are two bytes; a sample cut mid-unit just loses its last byte.
    sample = new TextDecoder(charset).decode(body.subarray(0, body.length - (body.length % 2)));
    if (sample.includes("\u0000")) {
      return { reason: "The file starts like UTF-16 text but contains NUL characters." };
    }
  }

  let printable = 0;
  let total = 0;
  for (const ch of sample) {
    total++;
    const c = ch.codePointAt(0)!;
    const control = (c < 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d && c !== 0x0c) || (c >= 0x7f && c < 0xa0);
    if (!control && c !== 0xfffd) printable++;
  }
  // A few stray control characters happen in real exports; a binary blob that happens to be
  // valid UTF-8 is dominated by them.
  if (total > 0 && printable / total < 0.95) {
    return { reason: "The file decodes as text but is mostly control characters, so it is treated as binary." };
  }
  return { sample, charset };
}

/**
 * Length of the prefix that ends on a character boundary: the sample was cut at an arbitrary
 * byte, and a multi-byte character split by that cut is not an encoding error.
 */
function completeUtf8Length(b: Uint8Array): number {
  const n = b.length;
  for (let back = 1; back <= Math.min(3, n); back++) {
    const byte = b[n - back]!;
    if ((byte & 0xc0) === 0x80) continue; // continuation byte: keep looking for the lead byte
    const need = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
    return need > back ? n - back : n;
  }
  return n;
}

const HTML_START = /^(?:<!doctype\s+html|<html[\s>]|<head[\s>]|<body[\s>])/i;

function looksLikeHtml(sample: string): boolean {
  let s = sample.replace(/^\uFEFF/, "").trimStart();
  // An XML declaration or leading comments may precede the real start of an HTML page.
  for (;;) {
    if (s.startsWith("<?xml")) {
      const end = s.indexOf("?>");
      if (end < 0) return false;
      s = s.slice(end + 2).trimStart();
    } else if (s.startsWith("<!--")) {
      const end = s.indexOf("-->");
      if (end < 0) return false;
      s = s.slice(end + 3).trimStart();
    } else break;
  }
  return HTML_START.test(s);
}
