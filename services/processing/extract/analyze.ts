import { detectContentType, SNIFF_BYTES, type ContentKind } from "../../../platform/blobs/content-type.js";
import { extractCitations, groupCitations, type Citation } from "./citations.js";
import { defaultMatcher, summarizeEntities, type EntityMatch, type EntitySummary } from "./entities.js";
import { htmlToText } from "./html.js";
import { guessLanguage } from "./language.js";
import { extractPdfText } from "./pdf.js";
import { scoreQuality, type QualityScore } from "./quality.js";
import { detectSpecialty, type SpecialtyResult } from "./specialty.js";
import { detectStructure } from "./structure.js";
import { charsetOf, decodeLegacyText, decodeText, normalizeText } from "./text.js";
import { failure, type ExtractionFailure } from "./types.js";

export interface AnalyzeInput {
  bytes: Uint8Array;
  /** What the uploader claimed. Only used to explain mismatches; the content decides. */
  declaredMime?: string;
}

export interface AnalyzeOptions {
  /** Larger inputs are refused outright. Default 100 MiB. */
  maxBytes?: number;
  /** PDFs with more pages are refused. Default 2000. */
  maxPages?: number;
  /** At most this many entity occurrences are returned (the summary still counts all). Default 1000. */
  maxEntities?: number;
  /** Extracted text beyond this many characters is dropped, with a warning. Default 5,000,000. */
  maxTextChars?: number;
}

export interface DocumentAnalysis {
  ok: true;
  contentType: { mime: string; kind: Exclude<ContentKind, "unknown" | "image"> };
  /** Normalized text; every offset in entities and citations points into it. */
  text: string;
  textLength: number;
  wordCount: number;
  /** Page count for PDFs; 1 for text and HTML. */
  pages: number;
  /** ISO 639-1 guess; absent when unsure. */
  language?: string;
  /** HTML <title>, or a PDF/text's first short line; a hint for the uploader's form, not authoritative. */
  title?: string;
  abstract?: string;
  keywords: string[];
  /** Entity occurrences in order, capped at maxEntities. */
  entities: EntityMatch[];
  entitiesTruncated: boolean;
  /** Distinct terms with counts over the whole text. */
  entitySummary: EntitySummary[];
  citations: Citation[];
  dois: string[];
  pmids: string[];
  pmcids: string[];
  sections: string[];
  specialty: SpecialtyResult;
  quality: QualityScore;
  /** Things the uploader or an operator may want to know; never fatal. */
  warnings: string[];
}

const DEFAULTS = {
  maxBytes: 100 * 1024 * 1024,
  maxPages: 2000,
  maxEntities: 1000,
  maxTextChars: 5_000_000,
};

const KIND_NAMES: Record<ContentKind, string> = {
  pdf: "a PDF",
  text: "plain text",
  html: "an HTML page",
  image: "an image",
  unknown: "an unrecognised format",
};

function kindOfMime(mime: string): ContentKind {
  const base = mime.split(";")[0]!.trim().toLowerCase();
  if (base === "application/pdf" || base === "application/x-pdf") return "pdf";
  if (base === "text/html" || base === "application/xhtml+xml") return "html";
  if (base.startsWith("text/")) return "text";
  if (base.startsWith("image/")) return "image";
  return "unknown";
}

/**
 * Everything the processing worker needs from one document version: its text and what can be
 * read from it. Never throws for bad input: each way a document can be unusable is a typed failure.
 */
export async function analyzeDocument(
  input: AnalyzeInput,
  options: AnalyzeOptions = {},
): Promise<DocumentAnalysis | ExtractionFailure> {
  const opts = { ...DEFAULTS, ...options };
  const { bytes } = input;
  if (bytes.length > opts.maxBytes) {
    return failure(
      "too_large",
      `The file is ${bytes.length} bytes; documents larger than ${opts.maxBytes} bytes are not processed.`,
    );
  }
  if (bytes.length === 0) return failure("empty", "The file is empty (0 bytes).");

  const warnings: string[] = [];
  let detected = detectContentType(bytes.subarray(0, SNIFF_BYTES));
  const declaredKind = input.declaredMime ? kindOfMime(input.declaredMime) : undefined;

  let raw: string | undefined;
  if (detected.kind === "unknown" && detected.mime === "application/octet-stream") {
    const legacy = decodeLegacyText(bytes);
    if (legacy !== undefined) {
      raw = legacy;
      const html = /^\s*(?:<!doctype\s+html|<html[\s>])/i.test(legacy);
      detected = {
        mime: `${html ? "text/html" : "text/plain"}; charset=windows-1252`,
        kind: html ? "html" : "text",
        needsOcr: false,
      };
      warnings.push("The text is not valid UTF-8; it was read as Windows-1252.");
    }
  }

  if (declaredKind && declaredKind !== "unknown" && declaredKind !== detected.kind && detected.kind !== "unknown") {
    warnings.push(
      `The file was declared as ${input.declaredMime} but its content is ${KIND_NAMES[detected.kind]} (${detected.mime.split(";")[0]}); it was processed as such.`,
    );
  }

  let text: string;
  let pages = 1;
  let title: string | undefined;
  switch (detected.kind) {
    case "unknown": {
      if (declaredKind === "pdf" && detected.mime === "application/octet-stream") {
        return failure("corrupt", `The file is named as a PDF but has no PDF header: ${lowerFirst(detected.reason)}`);
      }
      return failure("unsupported_type", detected.reason ?? "The file type is not supported.");
    }
    case "image":
      return failure(
        "image_only",
        `The file is an image (${detected.mime}); its text could only be read with OCR, which is not available.`,
      );
    case "pdf": {
      const pdf = await extractPdfText(bytes, { maxPages: opts.maxPages });
      if (!pdf.ok) return pdf;
      warnings.push(...pdf.warnings);
      pages = pdf.pages.length;
      text = pdf.pages.map(normalizeText).filter(Boolean).join("\n\n");
      break;
    }
    case "html": {
      const html = htmlToText(raw ?? decodeText(bytes, charsetOf(detected.mime)));
      text = html.text;
      title = html.title;
      break;
    }
    case "text":
      text = raw ?? decodeText(bytes, charsetOf(detected.mime));
      break;
  }

  text = normalizeText(text);
  if (text.length === 0) {
    return failure("empty", `The ${KIND_NAMES[detected.kind].replace(/^an? /, "")} contains no text.`);
  }
  if (text.length > opts.maxTextChars) {
    warnings.push(`The text was cut to its first ${opts.maxTextChars} characters of ${text.length}.`);
    text = text.slice(0, opts.maxTextChars);
  }
  title ??= guessTitle(text);

  const structure = detectStructure(text);
  const entities = defaultMatcher().match(text);
  const entitySummary = summarizeEntities(entities);
  const citations = extractCitations(text);
  const wordCount = text.match(/[\p{L}\p{N}]+/gu)?.length ?? 0;
  const language = guessLanguage(text);

  const result: DocumentAnalysis = {
    ok: true,
    contentType: { mime: detected.mime, kind: detected.kind },
    text,
    textLength: text.length,
    wordCount,
    pages,
    keywords: structure.keywords,
    entities: entities.slice(0, opts.maxEntities),
    entitiesTruncated: entities.length > opts.maxEntities,
    entitySummary,
    citations,
    ...groupCitations(citations),
    sections: structure.sections,
    specialty: detectSpecialty(entitySummary, text),
    quality: scoreQuality({
      wordCount,
      structure,
      citationCount: citations.length,
      distinctEntities: entitySummary.length,
    }),
    warnings,
  };
  if (language) result.language = language;
  if (title) result.title = title;
  if (structure.abstract) result.abstract = structure.abstract;
  return result;
}

function guessTitle(text: string): string | undefined {
  const first = text.split("\n", 1)[0]!.trim();
  return first.length >= 8 && first.length <= 200 && !/^(?:abstract|summary)\b/i.test(first) ? first : undefined;
}

function lowerFirst(s: string | undefined): string {
  if (!s) return "it is not a recognised format.";
  return s.charAt(0).toLowerCase() + s.slice(1);
}
