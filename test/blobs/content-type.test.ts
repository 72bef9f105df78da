import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { detectContentType } from "../../platform/blobs/index.js";

const bytes = (...parts: (string | number[])[]): Uint8Array =>
  Buffer.concat(parts.map((p) => (typeof p === "string" ? Buffer.from(p, "latin1") : Buffer.from(p))));
const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);

describe("detectContentType: supported kinds", () => {
  it.each<[string, Uint8Array, string, string]>([
    ["PDF", bytes("%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj"), "application/pdf", "pdf"],
    ["PDF with junk before the header", bytes("garbage\r\n", "%PDF-1.4\n"), "application/pdf", "pdf"],
    ["PNG", bytes([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13]), "image/png", "image"],
    ["JPEG", bytes([0xff, 0xd8, 0xff, 0xe0, 0, 0x10], "JFIF"), "image/jpeg", "image"],
    ["GIF87a", bytes("GIF87a", [1, 0, 1, 0]), "image/gif", "image"],
    ["GIF89a", bytes("GIF89a", [1, 0, 1, 0]), "image/gif", "image"],
    ["little-endian TIFF", bytes("II", [0x2a, 0, 8, 0, 0, 0]), "image/tiff", "image"],
    ["big-endian TIFF", bytes("MM", [0, 0x2a, 0, 0, 0, 8]), "image/tiff", "image"],
    ["WebP", bytes("RIFF", [0x24, 0, 0, 0], "WEBPVP8 "), "image/webp", "image"],
  ])("%s is detected as %s", (_name, input, mime, kind) => {
    const t = detectContentType(input);
    expect(t.mime).toBe(mime);
    expect(t.kind).toBe(kind);
    expect(t.needsOcr).toBe(kind === "image");
    expect(t.reason).toBeUndefined();
  });

  it.each([
    ["doctype", "<!DOCTYPE html><html><body>x</body></html>"],
    ["lower-case html tag after whitespace", "\n\n   <html lang=en><p>x"],
    ["BOM then doctype", "\uFEFF<!doctype HTML>\n<title>x</title>"],
    ["XML declaration then html", '<?xml version="1.0"?>\n<html xmlns="http://www.w3.org/1999/xhtml">'],
    ["comment then head", "<!-- generated -->\n<head><title>t</title></head>"],
    ["body fragment", "<body>\n<p>Patient notes</p>"],
  ])("HTML (%s) is detected as html", (_name, src) => {
    expect(detectContentType(utf8(src))).toEqual({ mime: "text/html; charset=utf-8", kind: "html", needsOcr: false });
  });

  it("plain UTF-8 with accents, tabs and CRLF is text", () => {
    const t = detectContentType(utf8("Résumé of café visits\r\n\tTemp 38.5 °C — µg/mL\r\n"));
    expect(t).toEqual({ mime: "text/plain; charset=utf-8", kind: "text", needsOcr: false });
  });

  it("text whose sample is cut in the middle of a multi-byte character is still text", () => {
    const full = utf8("ab€"); // € is three bytes
    expect(detectContentType(full.subarray(0, full.length - 1)).kind).toBe("text");
    expect(detectContentType(utf8("x😀").subarray(0, 3)).kind).toBe("text");
  });

  it("UTF-16LE text with a BOM is text with its charset named", () => {
    const body = Buffer.from("Hypertension notes\n", "utf16le");
    const t = detectContentType(Buffer.concat([Buffer.from([0xff, 0xfe]), body]));
    expect(t).toMatchObject({ kind: "text", mime: "text/plain; charset=utf-16le" });
  });

  it("text mentioning <html> further down is text, not html", () => {
    expect(detectContentType(utf8("Notes about the <html> tag\n")).kind).toBe("text");
  });
});

describe("detectContentType: unknown content with a reason", () => {
  it.each<[string, Uint8Array, RegExp]>([
    ["ZIP (also DOCX)", bytes("PK", [3, 4, 20, 0, 0, 0]), /ZIP archive/],
    ["ELF executable", bytes([0x7f], "ELF", [2, 1, 1, 0]), /executable/],
    ["Windows executable", bytes("MZ", [0x90, 0]), /Windows executable/],
    ["gzip", bytes([0x1f, 0x8b, 8, 0]), /gzip/],
    ["legacy Office", bytes([0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1]), /legacy Office/],
    ["text with NUL bytes", bytes("abc", [0], "def"), /NUL/],
    ["invalid UTF-8", bytes([0x61, 0xc3, 0x28, 0x62]), /valid UTF-8/],
    ["valid UTF-8 dominated by control characters", bytes([1, 2, 3, 4, 5, 6, 7, 8, 0x41]), /control characters/],
    ["empty input", new Uint8Array(0), /empty/],
  ])("%s is unknown with a reason", (_name, input, reason) => {
    const t = detectContentType(input);
    expect(t.kind).toBe("unknown");
    expect(t.needsOcr).toBe(false);
    expect(t.reason).toMatch(reason);
  });

  it("random binary is unknown with a reason, across 50 random samples", () => {
    for (let i = 0; i < 50; i++) {
      const sample = randomBytes(4096);
      sample[0] = 0x00; // keep clear of the image/archive signatures the random bytes might hit
      const t = detectContentType(sample);
      expect(t.kind).toBe("unknown");
      expect(t.reason).toBeTruthy();
    }
  });
});
