import { describe, expect, it } from "vitest";
import { assemblePageText, extractPdfText } from "./index.js";
import {
  blankPdf,
  encryptedPdf,
  garbledPdf,
  imageOnlyPdf,
  mixedPdf,
  paperPdf,
  truncatedPdf,
  PAPER,
} from "../../../test/fixtures/documents/make-fixtures.js";

describe("extractPdfText", () => {
  it("returns per-page text with headings, and a blank line where the page leaves a paragraph gap", async () => {
    const r = await extractPdfText(paperPdf());
    if (!r.ok) throw new Error(r.message);
    expect(r.pages).toHaveLength(3);
    expect(r.pages[0]).toMatch(new RegExp(`^${PAPER.title}\\n${PAPER.authors}\\n\\nAbstract\\nPatients with`));
    expect(r.pages[1]).toMatch(/^2\. Methods\n/);
    expect(r.pages[2]).toMatch(/^References\n1\. Example A/);
    expect(r.pagesWithoutText).toEqual([]);
  });

  it("leaves the caller's bytes intact (pdf.js gets a copy it may detach)", async () => {
    const bytes = new Uint8Array(paperPdf());
    const before = bytes.length;
    await extractPdfText(bytes);
    expect(bytes.length).toBe(before);
    expect(bytes.buffer.byteLength).toBeGreaterThan(0);
    expect(String.fromCharCode(...bytes.subarray(0, 5))).toBe("%PDF-");
  });

  it("a PDF with one text page and one scanned page succeeds and warns that page 2 has no text layer", async () => {
    const r = await extractPdfText(mixedPdf());
    if (!r.ok) throw new Error(r.message);
    expect(r.pages[0]).toContain("community-acquired pneumonia");
    expect(r.pages[1]).toBe("");
    expect(r.pagesWithoutText).toEqual([2]);
    expect(r.warnings).toEqual([expect.stringMatching(/^Pages 2 have no text layer/)]);
  });

  it.each([
    ["an /Encrypt dictionary whose passwords do not validate", encryptedPdf, "encrypted"],
    ["only an image XObject on its page", imageOnlyPdf, "image_only"],
    ["pages that draw nothing", blankPdf, "empty"],
    ["a header followed by noise", garbledPdf, "corrupt"],
    ["a file cut off inside its first stream", truncatedPdf, "corrupt"],
  ])("a PDF with %s fails with %s", async (_what, make, reason) => {
    const r = await extractPdfText(make());
    expect(r).toMatchObject({ ok: false, reason });
  });

  it("a PDF over the page limit fails with too_large without reading pages", async () => {
    expect(await extractPdfText(paperPdf(), { maxPages: 1 })).toMatchObject({ ok: false, reason: "too_large" });
  });
});

describe("fixture PDF writer", () => {
  it.each([
    ["paper", paperPdf],
    ["image-only", imageOnlyPdf],
    ["mixed", mixedPdf],
    ["encrypted", encryptedPdf],
  ])("the %s PDF has an xref table whose every offset points at its object header", (_name, make) => {
    const pdf = make().toString("latin1");
    const startxref = Number(/startxref\n(\d+)\n%%EOF\n$/.exec(pdf)![1]);
    expect(pdf.slice(startxref, startxref + 4)).toBe("xref");
    const [, first, count] = /^xref\n(\d+) (\d+)\n/.exec(pdf.slice(startxref))!;
    expect(first).toBe("0");
    const entries = pdf
      .slice(startxref)
      .split("\n")
      .slice(2, 2 + Number(count));
    expect(entries[0]).toBe("0000000000 65535 f ");
    entries.slice(1).forEach((e, i) => {
      expect(e).toMatch(/^\d{10} 00000 n $/);
      const offset = Number(e.slice(0, 10));
      expect(pdf.slice(offset, offset + `${i + 1} 0 obj`.length)).toBe(`${i + 1} 0 obj`);
    });
  });
});

describe("assemblePageText", () => {
  const item = (str: string, x: number, y: number, size = 10, width = str.length * size * 0.5) => ({
    str,
    transform: [size, 0, 0, size, x, y],
    width,
    height: size,
  });

  it("joins runs on one baseline, separating them with a space only where there is a gap", () => {
    expect(assemblePageText([item("Heart", 72, 700), item("failure", 72 + 30, 700)])).toBe("Heart failure");
    expect(assemblePageText([item("Heart", 72, 700, 10, 25), item("s", 97, 700)])).toBe("Hearts");
  });

  it("starts a new line on a new baseline and a paragraph on a gap of two line heights", () => {
    const text = assemblePageText([item("one", 72, 700), item("two", 72, 686), item("three", 72, 650)]);
    expect(text).toBe("one\ntwo\n\nthree");
  });

  it("does not double the line break when pdf.js already marked the end of line", () => {
    const text = assemblePageText([{ ...item("one", 72, 700), hasEOL: true }, item("two", 72, 686)]);
    expect(text).toBe("one\ntwo");
  });
});
