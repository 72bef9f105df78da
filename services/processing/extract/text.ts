export type TextCharset = "utf-8" | "utf-16le" | "utf-16be" | "windows-1252";

/** Reads the charset parameter out of a MIME type such as "text/plain; charset=utf-16le". */
export function charsetOf(mime: string): TextCharset {
  const m = /charset=([\w-]+)/i.exec(mime);
  const cs = m?.[1]?.toLowerCase();
  if (cs === "utf-16le" || cs === "utf-16be" || cs === "windows-1252") return cs;
  return "utf-8";
}

/**
 * Decodes bytes to a string, dropping a byte-order mark. Invalid sequences become U+FFFD rather
 * than failing: by the time we decode, detection has already decided this is text.
 */
export function decodeText(bytes: Uint8Array, charset: TextCharset = "utf-8"): string {
  if (charset === "windows-1252") return decodeWindows1252(bytes);
  // TextDecoder strips a BOM matching its own encoding.
  return new TextDecoder(charset).decode(bytes);
}

// Windows-1252 differs from Latin-1 only in 0x80-0x9F, where it has typographic characters.
// Decoded by hand because Node 20's TextDecoder("windows-1252") returns C1 controls there.
const CP1252_HIGH =
  "\u20ac\u0081\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u008d\u017d\u008f" +
  "\u0090\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u009d\u017e\u0178";

function decodeWindows1252(bytes: Uint8Array): string {
  let out = "";
  const CHUNK = 8192;
  for (let i = 0; i < bytes.length; i += CHUNK) {
    const codes = Array.from(bytes.subarray(i, i + CHUNK), (b) =>
      b >= 0x80 && b < 0xa0 ? CP1252_HIGH.charCodeAt(b - 0x80) : b,
    );
    out += String.fromCharCode(...codes);
  }
  return out;
}

/**
 * Files that are not valid UTF-8 are, in practice, almost always Windows-1252 (legacy Word and
 * Notepad exports). Returns the decoded text when the bytes read sensibly that way.
 */
export function decodeLegacyText(bytes: Uint8Array): string | undefined {
  if (bytes.includes(0)) return undefined;
  const s = decodeWindows1252(bytes);
  let control = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if ((c < 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d && c !== 0x0c) || (c >= 0x7f && c < 0xa0)) control++;
  }
  return s.length > 0 && control / s.length < 0.02 ? s : undefined;
}

/**
 * One text shape for every extractor: LF line ends, NFC, no control characters, no trailing
 * spaces, at most one blank line between paragraphs. Offsets reported by the entity matcher and
 * citation finder refer to this normalized text.
 */
export function normalizeText(input: string): string {
  return (
    input
      .replace(/\r\n?|[\u2028\u2029\u0085\f\v]/g, "\n")
      .replace(/[\u00a0\u2000-\u200a\u202f\u205f\u3000]/g, " ")
      // eslint-disable-next-line no-control-regex
      .replace(/[\u0000-\u0008\u000e-\u001f\u007f\u200b\ufeff]/g, "")
      .normalize("NFC")
      .replace(/[ \t]+\n/g, "\n")
      .replace(/\n{3,}/g, "\n\n")
      .trim()
  );
}
