import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { analyzeDocument, type DocumentAnalysis } from "./index.js";
import { FIXTURES, makeFixtures, PAPER, type FixtureName } from "../../../test/fixtures/documents/make-fixtures.js";

let dir: string;
let paths: Record<FixtureName, string>;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "medmesh-docs-"));
  paths = await makeFixtures(dir);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function analyzeFixture(name: FixtureName) {
  const bytes = await readFile(paths[name]);
  return analyzeDocument({ bytes, declaredMime: FIXTURES[name].declaredMime });
}

function expectOk(r: Awaited<ReturnType<typeof analyzeDocument>>): DocumentAnalysis {
  if (!r.ok) throw new Error(`expected success, got ${r.reason}: ${r.message}`);
  return r;
}

describe("analyzeDocument on the generated paper PDF", () => {
  let r: DocumentAnalysis;
  beforeAll(async () => {
    r = expectOk(await analyzeFixture("paper"));
  });

  it("reads all three pages as PDF text", () => {
    expect(r.contentType).toEqual({ mime: "application/pdf", kind: "pdf" });
    expect(r.pages).toBe(3);
    expect(r.text).toContain("1. Introduction");
    expect(r.text).toContain("References");
    expect(r.textLength).toBe(r.text.length);
    expect(r.wordCount).toBeGreaterThan(300);
    expect(r.warnings).toEqual([]);
  });

  it("finds the abstract exactly, ending before the keywords", () => {
    expect(r.abstract).toBe(PAPER.abstract);
  });

  it("finds the author keywords", () => {
    expect(r.keywords).toEqual(PAPER.keywords);
  });

  it("finds every DOI, PMID and PMCID once, in order of appearance", () => {
    expect(r.dois).toEqual(PAPER.dois);
    expect(r.pmids).toEqual(PAPER.pmids);
    expect(r.pmcids).toEqual([PAPER.pmcid]);
    for (const c of r.citations) expect(r.text.slice(c.start, c.end).toLowerCase()).toBe(c.id.toLowerCase());
  });

  it("finds medical entities whose offsets point at their text, with the abbreviation MI boosted by its spelled-out form", () => {
    const canon = new Set(r.entitySummary.map((e) => e.canonical));
    for (const c of [
      "myocardial infarction",
      "type 2 diabetes mellitus",
      "coronary artery bypass grafting",
      "metformin",
      "aspirin",
      "left ventricle",
    ]) {
      expect(canon).toContain(c);
    }
    for (const e of r.entities) expect(r.text.slice(e.start, e.end)).toBe(e.text);
    const mi = r.entities.find((e) => e.text === "MI");
    expect(mi).toMatchObject({ canonical: "myocardial infarction", matchedBy: "abbreviation", confidence: 0.8 });
  });

  it("names cardiology as the specialty and scores quality high, with the headings found", () => {
    expect(r.specialty.primary).toBe("cardiology");
    expect(r.sections).toEqual(["introduction", "methods", "results", "discussion", "references"]);
    expect(r.quality.score).toBeGreaterThan(0.7);
    expect(r.quality.score).toBeLessThanOrEqual(1);
    expect(r.language).toBe("en");
    expect(r.title).toBe(PAPER.title);
  });
});

describe("analyzeDocument: each bad input and its outcome", () => {
  it.each<[FixtureName, string, RegExp]>([
    ["encrypted", "encrypted", /password/],
    ["imageOnly", "image_only", /OCR/],
    ["garbled", "corrupt", /damaged/],
    ["truncated", "corrupt", /damaged/],
    ["blank", "empty", /no text or images/],
    ["zeroBytes", "empty", /0 bytes/],
    ["png", "image_only", /image \(image\/png\).*OCR/],
    ["zipAsPdf", "unsupported_type", /ZIP archive/],
  ])("%s fails with reason %s and a human message", async (name, reason, message) => {
    const r = await analyzeFixture(name);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.reason).toBe(reason);
    expect(r.message).toMatch(message);
    expect(r.message).toMatch(/[.]$/);
  });

  it("an HTML page saved as .pdf is analysed as HTML, with a warning about the declared type", async () => {
    const r = expectOk(await analyzeFixture("mislabeled"));
    expect(r.contentType.kind).toBe("html");
    expect(r.warnings).toEqual([expect.stringMatching(/declared as application\/pdf but its content is an HTML page/)]);
    expect(r.title).toBe("Asthma & COPD in primary care");
  });

  it("a PNG declared as text/plain is still refused as an image needing OCR", async () => {
    const r = await analyzeDocument({ bytes: await readFile(paths.png), declaredMime: "text/plain" });
    expect(r).toMatchObject({ ok: false, reason: "image_only" });
  });

  it("unrecognisable binary declared as a PDF is reported as corrupt", async () => {
    const bytes = Buffer.from([0x00, 0x01, 0x02, 0xff, 0xfe, 0x00, 0x10, 0x80]);
    const r = await analyzeDocument({ bytes, declaredMime: "application/pdf" });
    expect(r).toMatchObject({ ok: false, reason: "corrupt", message: expect.stringMatching(/no PDF header/) });
  });

  it("unrecognisable binary with no declared type is unsupported_type", async () => {
    const r = await analyzeDocument({ bytes: Buffer.from([0x00, 0x01, 0x02, 0x03]) });
    expect(r).toMatchObject({ ok: false, reason: "unsupported_type", message: expect.stringMatching(/binary/) });
  });

  it("input over maxBytes fails with too_large before any parsing", async () => {
    const r = await analyzeDocument({ bytes: await readFile(paths.paper) }, { maxBytes: 100 });
    expect(r).toMatchObject({ ok: false, reason: "too_large" });
  });

  it("a PDF with more pages than maxPages fails with too_large", async () => {
    const r = await analyzeDocument({ bytes: await readFile(paths.paper) }, { maxPages: 2 });
    expect(r).toMatchObject({ ok: false, reason: "too_large", message: expect.stringMatching(/3 pages/) });
  });

  it("a whitespace-only text file fails with empty", async () => {
    const r = await analyzeDocument({ bytes: Buffer.from(" \r\n\t\n  ") });
    expect(r).toMatchObject({ ok: false, reason: "empty", message: "The plain text contains no text." });
  });

  it("an HTML page with only scripts and styles fails with empty", async () => {
    const html = "<!doctype html><html><head><script>var a = 1;</script><style>p{}</style></head><body></body></html>";
    expect(await analyzeDocument({ bytes: Buffer.from(html) })).toMatchObject({ ok: false, reason: "empty" });
  });
});

describe("analyzeDocument on text and HTML", () => {
  it("plain text: CRLF and lone CR become LF, abstract and key words found, HTN matched as an abbreviation", async () => {
    const r = expectOk(await analyzeFixture("text"));
    expect(r.text).not.toMatch(/\r/);
    expect(r.text).toContain("ten years.\nAn MRI");
    expect(r.abstract).toMatch(/^A 64-year-old man .* atorvastatin started\.$/);
    expect(r.keywords).toEqual(["hypertension", "CKD", "stroke prevention"]);
    expect(r.entities.find((e) => e.text === "HTN")).toMatchObject({ canonical: "hypertension", confidence: 0.9 });
    expect(
      r.entities.find((e) => e.text === "ischaemic attack" || e.text === "transient ischaemic attack"),
    ).toMatchObject({
      canonical: "transient ischemic attack",
    });
  });

  it("HTML: script, style, comment and nav text is gone, entities decoded, paragraphs kept", async () => {
    const r = expectOk(await analyzeFixture("html"));
    expect(r.text).not.toMatch(/Methotrexate|warfarin|font-family|Enable JavaScript|Home/);
    expect(r.text).toContain(
      "exacerbations fell by 12% and pneumonia rates were unchanged \u2014 a reassuring result.",
    );
    expect(r.text).toContain("<70% of predicted>");
    expect(r.text).toMatch(/\n\nPulmonary rehabilitation\n\nInfluenza vaccination\n\n/);
    expect(r.keywords).toEqual(["asthma", "COPD", "inhaled corticosteroids", "spirometry"]);
    expect(r.specialty.primary).toBe("pulmonology");
    expect(r.dois).toEqual(["10.1183/medmesh.2021.555"]);
    expect(r.pmids).toEqual(["30111222"]);
  });

  it("Windows-1252 text (not valid UTF-8) is decoded with a warning", async () => {
    const bytes = Buffer.from(
      "Patient with an\u00e6mia and fever \u0093quoted\u0094 notes about hypertension.",
      "latin1",
    );
    const r = expectOk(await analyzeDocument({ bytes }));
    expect(r.text).toContain("\u201cquoted\u201d");
    expect(r.warnings).toEqual(["The text is not valid UTF-8; it was read as Windows-1252."]);
    expect(r.entitySummary.map((e) => e.canonical)).toContain("hypertension");
  });

  it("entities are capped at maxEntities while the summary still counts every occurrence", async () => {
    const text = "Hypertension and asthma. ".repeat(30);
    const r = expectOk(await analyzeDocument({ bytes: Buffer.from(text) }, { maxEntities: 5 }));
    expect(r.entities).toHaveLength(5);
    expect(r.entitiesTruncated).toBe(true);
    expect(r.entitySummary.find((e) => e.canonical === "hypertension")?.count).toBe(30);
  });

  it("text longer than maxTextChars is cut with a warning", async () => {
    const r = expectOk(await analyzeDocument({ bytes: Buffer.from("word ".repeat(1000)) }, { maxTextChars: 100 }));
    expect(r.textLength).toBe(100);
    expect(r.warnings[0]).toMatch(/cut to its first 100 characters/);
  });
});
