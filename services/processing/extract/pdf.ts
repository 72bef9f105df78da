import { getResolvedPDFJS } from "unpdf";
import { failure, type ExtractionFailure } from "./types.js";

export interface PdfText {
  ok: true;
  /** Text of each page in order; a page without a text layer is "". */
  pages: string[];
  /** 1-based numbers of pages that have no text layer (scanned pages, figures). */
  pagesWithoutText: number[];
  warnings: string[];
}

export interface PdfOptions {
  /** Refuse documents with more pages than this, before reading any page. */
  maxPages?: number;
}

const DEFAULT_MAX_PAGES = 2000;
// Looking for images means building a page's full operator list; a few pages decide the question.
const IMAGE_PROBE_PAGES = 5;

/** The subset of pdf.js's text item we use; marked-content items have no `str` and are skipped. */
interface TextItemLike {
  str: string;
  transform: number[];
  width: number;
  height: number;
  hasEOL?: boolean;
}

/**
 * Opens a PDF as unpdf's getDocumentProxy does (same options), without the font and cmap lookup
 * it makes on every call: that asks the module loader to resolve pdfjs-dist, which is not
 * installed (unpdf bundles its own build), and under a loader hook each failed lookup is a
 * synchronous round trip to the loader thread, per document.
 */
async function openPdf(data: Uint8Array) {
  const { getDocument } = await getResolvedPDFJS();
  return getDocument({ data, isEvalSupported: false, useSystemFonts: true, verbosity: 0 }).promise;
}

/**
 * Extracts per-page text with pdf.js (through unpdf's serverless build, which runs in-process with
 * no worker thread and no native canvas). Failures are classified so the uploader is told whether
 * the file is password-protected, a scan that needs OCR, damaged, or simply blank.
 */
export async function extractPdfText(bytes: Uint8Array, opts: PdfOptions = {}): Promise<PdfText | ExtractionFailure> {
  const maxPages = opts.maxPages ?? DEFAULT_MAX_PAGES;
  let doc: Awaited<ReturnType<typeof openPdf>>;
  try {
    // pdf.js may detach the buffer it is given and refuses Node Buffers, so it gets a plain copy.
    doc = await openPdf(new Uint8Array(bytes));
  } catch (err) {
    return classifyOpenError(err);
  }

  try {
    if (doc.numPages === 0) return failure("empty", "The PDF has no pages.");
    if (doc.numPages > maxPages) {
      return failure("too_large", `The PDF has ${doc.numPages} pages; at most ${maxPages} are processed.`);
    }
    const pages: string[] = [];
    const pagesWithoutText: number[] = [];
    const warnings: string[] = [];
    for (let n = 1; n <= doc.numPages; n++) {
      let text = "";
      try {
        const page = await doc.getPage(n);
        const content = await page.getTextContent();
        text = assemblePageText(content.items.filter((i) => "str" in i) as TextItemLike[]);
        page.cleanup();
      } catch (err) {
        // One unreadable page should not lose the rest of the paper.
        warnings.push(`Page ${n} could not be read (${describe(err)}); its text is missing.`);
      }
      pages.push(text);
      if (text.trim() === "") pagesWithoutText.push(n);
    }

    if (pagesWithoutText.length === doc.numPages) {
      const hasImages = await anyPageDrawsImages(doc, pagesWithoutText.slice(0, IMAGE_PROBE_PAGES));
      if (hasImages) {
        return failure(
          "image_only",
          "The PDF contains only images (for example a scan) and no text layer; it would need OCR, which is not available.",
        );
      }
      if (warnings.length > 0) return failure("corrupt", `The PDF is damaged: ${warnings[0]}`);
      return failure("empty", `The PDF has ${doc.numPages} page(s) but no text or images on them.`);
    }
    if (pagesWithoutText.length > 0) {
      warnings.push(
        `Pages ${pagesWithoutText.join(", ")} have no text layer (scanned or figure-only) and were skipped.`,
      );
    }
    if (hasEncryptDictionary(bytes)) {
      warnings.push("The PDF is encrypted with an empty user password; it was readable without one.");
    }
    return { ok: true, pages, pagesWithoutText, warnings };
  } finally {
    await doc.destroy().catch(() => {});
  }
}

function classifyOpenError(err: unknown): ExtractionFailure {
  const name = (err as { name?: unknown })?.name;
  if (name === "PasswordException") {
    return failure("encrypted", "The PDF is password-protected; upload a copy without a password.");
  }
  if (name === "InvalidPDFException") {
    return failure("corrupt", "The PDF is damaged or incomplete and cannot be read; try exporting it again.");
  }
  return failure("corrupt", `The PDF could not be opened (${describe(err)}).`);
}

function describe(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.length > 160 ? `${msg.slice(0, 157)}...` : msg;
}

/**
 * Rebuilds lines and paragraphs from positioned text runs. pdf.js gives runs with baselines; a
 * change of baseline is a new line, and a gap of about two line heights is a paragraph break,
 * which the abstract and keyword detectors rely on.
 */
export function assemblePageText(items: TextItemLike[]): string {
  let out = "";
  let lastY: number | undefined;
  let lastEndX = 0;
  let lastSize = 0;
  for (const item of items) {
    const [a = 0, b = 0, c = 0, d = 0, x = 0, y = 0] = item.transform;
    const size = Math.hypot(c, d) || Math.hypot(a, b) || item.height || 10;
    if (lastY !== undefined) {
      const dy = lastY - y;
      const lineHeight = Math.max(size, lastSize);
      if (Math.abs(dy) > lineHeight * 0.5) {
        // hasEOL may already have ended the line; only the missing newlines are added.
        const wanted = dy > lineHeight * 1.9 ? 2 : 1;
        const have = /\n*$/.exec(out)![0].length;
        out += "\n".repeat(Math.max(0, wanted - have));
      } else if (item.str && !/\s$/.test(out) && !/^\s/.test(item.str) && x - lastEndX > size * 0.15) {
        out += " ";
      }
    }
    out += item.str;
    if (item.hasEOL && !out.endsWith("\n")) out += "\n";
    if (item.str || lastY === undefined) {
      lastY = y;
      lastEndX = x + item.width;
      lastSize = size;
    }
  }
  return out
    .replace(/[ \t]+\n/g, "\n")
    .replace(/\n{3,}/g, "\n\n")
    .trim();
}

async function anyPageDrawsImages(doc: Awaited<ReturnType<typeof openPdf>>, pageNumbers: number[]): Promise<boolean> {
  const { OPS } = await getResolvedPDFJS();
  const imageOps = new Set<number>([OPS.paintImageXObject, OPS.paintInlineImageXObject, OPS.paintImageMaskXObject]);
  for (const n of pageNumbers) {
    try {
      const page = await doc.getPage(n);
      const ops = await page.getOperatorList();
      page.cleanup();
      if (ops.fnArray.some((f) => imageOps.has(f))) return true;
    } catch {
      // An unreadable page is judged by the remaining ones.
    }
  }
  return false;
}

const ENCRYPT_KEY = Buffer.from("/Encrypt");

function hasEncryptDictionary(bytes: Uint8Array): boolean {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).includes(ENCRYPT_KEY);
}
