import { describe, expect, it } from "vitest";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  FailureReason,
  ProcessingResultSchema,
  type ProcessingResult,
  RecordProcessingResultRequestSchema,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import {
  DocumentFailedSchema,
  DocumentProcessedSchema,
  DocumentUploadedSchema,
} from "../../gen/medmesh/events/v1/document_events_pb.js";
import { eventType, newEvent, PoisonMessageError, protobufContentType } from "../../platform/events/index.js";
import { check } from "../../platform/grpc/interceptors/validation.js";
import type { DocumentAnalysis, FailureReason as ExtractReason } from "./extract/index.js";
import { clip, cutUtf8, LIMITS, outcomeEventId, toProcessingFailure, toProcessingResult } from "./result.js";
import { readUploaded } from "./worker.js";

const UPLOADED_TYPE = eventType(DocumentUploadedSchema);
const PROCESSED_TYPE = eventType(DocumentProcessedSchema);
const FAILED_TYPE = eventType(DocumentFailedSchema);

const DOC = "0b6f6c1e-5a5e-4d7e-9c1a-2f1f3c4d5e6f";
/** No lone surrogate: what String.prototype.isWellFormed (ES2024) checks. */
const wellFormed = (s: string) => !/\p{Surrogate}/u.test(s);

/** An analysis past every bound the contract sets, as a hostile or huge document could produce. */
function oversized(): DocumentAnalysis {
  // 3-byte characters, with a 4-byte one straddling the 1 MiB mark.
  const text = "é".repeat(524_287) + "😀" + "ü".repeat(600_000);
  const long = (n: number) => "x".repeat(n);
  return {
    ok: true,
    contentType: { mime: `text/plain; charset=utf-8; ${long(200)}`, kind: "text" },
    text,
    textLength: text.length,
    wordCount: 3,
    pages: 1,
    language: "en-x-very-long",
    title: long(5000),
    abstract: long(30_000),
    keywords: Array.from({ length: 150 }, () => long(300)),
    entities: Array.from({ length: 3000 }, (_, i) => ({
      text: long(250),
      canonical: long(250),
      type: "drug" as const,
      start: i,
      end: i + 1,
      confidence: 1.2,
      matchedBy: "abbreviation" as const,
    })),
    entitiesTruncated: false,
    entitySummary: Array.from({ length: 6000 }, (_, i) => ({
      canonical: `${i}${long(250)}`,
      type: "disease" as const,
      count: 0,
      confidence: -0.1,
      specialties: [],
    })),
    citations: Array.from({ length: 6000 }, (_, i) => ({
      type: "doi" as const,
      id: `10.1000/${i}${long(400)}`,
      start: i,
      end: i + 5,
    })),
    dois: [],
    pmids: [],
    pmcids: [],
    sections: Array.from({ length: 300 }, () => long(300)),
    specialty: {
      primary: "cardiology",
      ranked: Array.from({ length: 12 }, () => ({ specialty: "cardiology" as const, share: 1.0000001 })),
    },
    quality: {
      score: 1.5,
      components: Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`c${i}`, 2])) as never,
    },
    warnings: Array.from({ length: 80 }, () => long(2000)),
  };
}

/** What documents' validation does with the result inside a RecordProcessingResult. */
const checkRecorded = (value: ProcessingResult) =>
  check(
    RecordProcessingResultRequestSchema,
    create(RecordProcessingResultRequestSchema, { documentId: DOC, version: 1, outcome: { case: "result", value } }),
  );

describe("the analysis as a ProcessingResult", () => {
  it("stays inside every bound of the contract, so documents accepts it", () => {
    const r = toProcessingResult(oversized(), 64 * 1024 * 1024);
    expect(() => checkRecorded(r)).not.toThrow();
    expect(r.entities).toHaveLength(LIMITS.entities);
    expect(r.entitiesTruncated).toBe(true);
    expect(r.entitySummary.every((s) => s.count >= 1)).toBe(true);
    expect(r.textLength).toBe(oversized().textLength);
    expect(r.textTruncated).toBe(true);
    expect(Buffer.byteLength(r.text)).toBeLessThanOrEqual(LIMITS.textBytes);
    // Cut between characters: the emoji at the boundary is dropped whole, not halved.
    expect(r.text.endsWith("é")).toBe(true);
    expect(wellFormed(r.text)).toBe(true);
  });

  it("the unclipped analysis would have been refused (the bounds are real)", () => {
    const raw = oversized();
    const naive = create(ProcessingResultSchema, { title: raw.title, keywords: raw.keywords });
    expect(() => checkRecorded(naive)).toThrow(/title|keywords/);
  });

  it("gives up text, never structure, to fit the message limit documents accepts", () => {
    // Every list at its cap comes to about 3 MB here; with 1 MiB of text that is over 4 MiB.
    const limit = 4 * 1024 * 1024;
    const r = toProcessingResult(oversized(), limit);
    expect(toBinary(ProcessingResultSchema, r).length).toBeLessThanOrEqual(limit);
    expect(Buffer.byteLength(r.text)).toBeLessThan(LIMITS.textBytes - 64 * 1024);
    expect(wellFormed(r.text)).toBe(true);
    expect(r.citations).toHaveLength(LIMITS.citations);
  });

  it("keeps a small result whole", () => {
    const a = oversized();
    const small = {
      ...a,
      text: "Aspirin.",
      textLength: 8,
      entities: a.entities.slice(0, 2),
      entitySummary: [],
      citations: [],
      keywords: ["aspirin"],
      sections: [],
      warnings: [],
      title: "T",
      abstract: "",
    };
    const r = toProcessingResult(small);
    expect(r).toMatchObject({
      text: "Aspirin.",
      textTruncated: false,
      entitiesTruncated: false,
      keywords: ["aspirin"],
      title: "T",
    });
  });
});

describe("text cutting", () => {
  it.each([
    ["ascii under the limit", "abc", 3, "abc", false],
    ["ascii over the limit", "abcdef", 4, "abcd", true],
    ["a two-byte character that does not fit", "aé", 2, "a", true],
    ["a surrogate pair that does not fit", "a😀b", 4, "a", true],
    ["a surrogate pair that fits exactly", "a😀b", 5, "a😀", true],
  ])("%s", (_what, text, bytes, expected, truncated) => {
    expect(cutUtf8(text, bytes)).toEqual({ text: expected, truncated });
  });

  it("clip counts characters as protovalidate does, not UTF-16 units", () => {
    expect(clip("😀😀😀", 2)).toBe("😀😀");
    expect(clip("😀😀", 2)).toBe("😀😀");
  });
});

describe("failures", () => {
  const reasons: Array<[ExtractReason, FailureReason]> = [
    ["encrypted", FailureReason.ENCRYPTED],
    ["image_only", FailureReason.IMAGE_ONLY],
    ["corrupt", FailureReason.CORRUPT],
    ["empty", FailureReason.EMPTY],
    ["unsupported_type", FailureReason.UNSUPPORTED_TYPE],
    ["too_large", FailureReason.TOO_LARGE],
  ];
  it.each(reasons)("%s becomes its own reason in the contract", (reason, expected) => {
    const f = toProcessingFailure({ ok: false, reason, message: "m".repeat(3000) });
    expect(f.reason).toBe(expected);
    expect(f.message).toHaveLength(LIMITS.failureMessage);
  });
});

describe("outcome event ids", () => {
  it("are UUIDs, the same for the same version and outcome, different otherwise", () => {
    const id = outcomeEventId(PROCESSED_TYPE, DOC, 1);
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(outcomeEventId(PROCESSED_TYPE, DOC, 1)).toBe(id);
    expect(new Set([id, outcomeEventId(PROCESSED_TYPE, DOC, 2), outcomeEventId(FAILED_TYPE, DOC, 1)]).size).toBe(3);
  });
});

describe("reading DocumentUploaded", () => {
  const event = (payload: Uint8Array, extra: Partial<Parameters<typeof newEvent>[0]> = {}) =>
    newEvent({
      type: UPLOADED_TYPE,
      source: "/medmesh/documents",
      key: DOC,
      payload,
      contentType: protobufContentType(DocumentUploadedSchema.typeName),
      ...extra,
    });
  const good = toBinary(
    DocumentUploadedSchema,
    create(DocumentUploadedSchema, { documentId: DOC, version: 2, sizeBytes: 10n }),
  );

  it("reads a well-formed one", () => {
    expect(readUploaded(event(good))).toMatchObject({ documentId: DOC, version: 2 });
  });

  it.each([
    ["bytes that are not protobuf", event(Uint8Array.from([0x0a, 0xff, 0x01])), /does not decode/],
    ["another message type", event(good, { contentType: "application/json" }), /content-type/],
    [
      "no document id",
      event(toBinary(DocumentUploadedSchema, create(DocumentUploadedSchema, { version: 1 }))),
      /document_id/,
    ],
    [
      "no version",
      event(toBinary(DocumentUploadedSchema, create(DocumentUploadedSchema, { documentId: DOC }))),
      /version/,
    ],
    ["a key that is not the document", event(good, { key: "0b6f6c1e-5a5e-4d7e-9c1a-000000000000" }), /key/],
  ])("refuses %s as poison (no retry can fix it)", (_what, e, message) => {
    let caught: unknown;
    try {
      readUploaded(e);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(PoisonMessageError);
    expect((caught as Error).message).toMatch(message);
  });
});
