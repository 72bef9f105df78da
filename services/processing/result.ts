import { createHash } from "node:crypto";
import { create, toBinary, type DescMessage } from "@bufbuild/protobuf";
import { timestampDate, timestampNow } from "@bufbuild/protobuf/wkt";
import {
  CitationType,
  EntityType,
  FailureReason,
  ProcessingFailureSchema,
  ProcessingResultSchema,
  type ProcessingFailure,
  type ProcessingOutcome,
  type ProcessingResult,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import { DocumentFailedSchema, DocumentProcessedSchema } from "../../gen/medmesh/events/v1/document_events_pb.js";
import { contractEvent, eventType, type OutboxEvent } from "../../platform/events/index.js";
import type { DocumentAnalysis, ExtractionFailure, FailureReason as ExtractReason } from "./extract/index.js";

export const EVENT_SOURCE = "/medmesh/processing";

/** The contract's bounds on a ProcessingResult (documents.proto); exceeding one is invalid_argument. */
export const LIMITS = {
  textBytes: 1024 * 1024,
  entities: 1000,
  entitySummary: 5000,
  citations: 5000,
  keywords: 100,
  sections: 200,
  warnings: 50,
  specialties: 10,
  qualityComponents: 32,
  short: 200,
  mime: 127,
  language: 8,
  title: 1000,
  abstract: 20000,
  specialty: 100,
  citationId: 300,
  matchedBy: 20,
  warning: 1000,
  failureMessage: 2000,
} as const;

/** At most `n` characters (code points, as protovalidate counts them), never splitting a pair. */
export function clip(s: string, n: number): string {
  if (s.length <= n) return s;
  const points = Array.from(s);
  return points.length <= n ? s : points.slice(0, n).join("");
}

/** The longest prefix of `text` that is at most `maxBytes` of UTF-8, cut between characters. */
export function cutUtf8(text: string, maxBytes: number): { text: string; truncated: boolean } {
  // A string needs at least one byte per UTF-16 unit, at most three: cheap exits both ways.
  if (text.length * 3 <= maxBytes) return { text, truncated: false };
  const { read } = new TextEncoder().encodeInto(text, new Uint8Array(maxBytes));
  return read === text.length ? { text, truncated: false } : { text: text.slice(0, read), truncated: true };
}

const unit = (x: number) => (Number.isFinite(x) ? Math.min(1, Math.max(0, x)) : 0);
const count = (x: number) => Math.max(0, Math.min(2 ** 31 - 1, Math.trunc(x)));

const ENTITY_TYPES: Record<DocumentAnalysis["entities"][number]["type"], EntityType> = {
  disease: EntityType.DISEASE,
  drug: EntityType.DRUG,
  procedure: EntityType.PROCEDURE,
  anatomy: EntityType.ANATOMY,
};

const CITATION_TYPES: Record<DocumentAnalysis["citations"][number]["type"], CitationType> = {
  doi: CitationType.DOI,
  pmid: CitationType.PMID,
  pmcid: CitationType.PMCID,
};

const FAILURE_REASONS: Record<ExtractReason, FailureReason> = {
  encrypted: FailureReason.ENCRYPTED,
  // The extract library also says image_only for image files (PNG, JPEG…): for the uploader it is
  // the same situation as a scanned PDF (text only OCR could read), and the same remedy.
  image_only: FailureReason.IMAGE_ONLY,
  corrupt: FailureReason.CORRUPT,
  empty: FailureReason.EMPTY,
  unsupported_type: FailureReason.UNSUPPORTED_TYPE,
  too_large: FailureReason.TOO_LARGE,
};

/**
 * The analysis as the contract's ProcessingResult, inside every bound the contract sets, so
 * documents never refuses it: lists are capped (entities at 1000, with `entities_truncated`), text
 * is cut at 1 MiB of UTF-8 (`text_truncated`; `text_length` still counts the whole), strings
 * clipped. Entity and citation offsets index the whole extracted text, so those past the cut
 * point into the part that was not kept.
 */
export function toProcessingResult(a: DocumentAnalysis, maxMessageBytes = 4 * 1024 * 1024): ProcessingResult {
  const entities = a.entities.slice(0, LIMITS.entities);
  const result = create(ProcessingResultSchema, {
    mimeType: clip(a.contentType.mime, LIMITS.mime),
    pages: count(a.pages),
    wordCount: count(a.wordCount),
    textLength: count(a.textLength),
    language: clip(a.language ?? "", LIMITS.language),
    title: clip(a.title ?? "", LIMITS.title),
    abstract: clip(a.abstract ?? "", LIMITS.abstract),
    keywords: a.keywords.slice(0, LIMITS.keywords).map((k) => clip(k, LIMITS.short)),
    entities: entities.map((e) => ({
      text: clip(e.text, LIMITS.short),
      canonical: clip(e.canonical, LIMITS.short),
      type: ENTITY_TYPES[e.type],
      start: count(e.start),
      end: count(e.end),
      confidence: unit(e.confidence),
      matchedBy: clip(e.matchedBy, LIMITS.matchedBy),
    })),
    entitiesTruncated: a.entitiesTruncated || a.entities.length > entities.length,
    entitySummary: a.entitySummary.slice(0, LIMITS.entitySummary).map((s) => ({
      canonical: clip(s.canonical, LIMITS.short),
      type: ENTITY_TYPES[s.type],
      count: Math.max(1, count(s.count)),
      confidence: unit(s.confidence),
    })),
    citations: a.citations.slice(0, LIMITS.citations).map((c) => ({
      type: CITATION_TYPES[c.type],
      id: clip(c.id, LIMITS.citationId),
      start: count(c.start),
      end: count(c.end),
    })),
    specialty: clip(a.specialty.primary ?? "", LIMITS.specialty),
    specialties: a.specialty.ranked
      .slice(0, LIMITS.specialties)
      .map((s) => ({ specialty: clip(s.specialty, LIMITS.specialty), share: unit(s.share) })),
    quality: {
      score: unit(a.quality.score),
      components: Object.fromEntries(
        Object.entries(a.quality.components)
          .slice(0, LIMITS.qualityComponents)
          .map(([k, v]) => [k, unit(v)]),
      ),
    },
    sections: a.sections.slice(0, LIMITS.sections).map((s) => clip(s, LIMITS.short)),
    warnings: a.warnings.slice(0, LIMITS.warnings).map((w) => clip(w, LIMITS.warning)),
  });
  const cut = cutUtf8(a.text, LIMITS.textBytes);
  result.text = cut.text;
  result.textTruncated = cut.truncated;
  // Everything else is bounded well under the message limit, but a document full of long
  // identifiers could still push the whole over it; the text gives way first.
  const margin = 64 * 1024;
  const over = toBinary(ProcessingResultSchema, result).length - (maxMessageBytes - margin);
  if (over > 0) {
    const shorter = cutUtf8(result.text, Math.max(0, Buffer.byteLength(result.text) - over));
    result.text = shorter.text;
    result.textTruncated = true;
  }
  return result;
}

export function toProcessingFailure(f: ExtractionFailure): ProcessingFailure {
  return create(ProcessingFailureSchema, {
    reason: FAILURE_REASONS[f.reason],
    message: clip(f.message, LIMITS.failureMessage),
  });
}

/** What the document says when processing gave up on it (the event went to the dead-letter topic). */
export function processingErrorFailure(attempts: number): ProcessingFailure {
  return create(ProcessingFailureSchema, {
    reason: FailureReason.PROCESSING_ERROR,
    message: `The document could not be processed: ${attempts} attempts failed on our side. It has been set aside for the operators; uploading it again starts over.`,
  });
}

/**
 * A stable event id per version and outcome: however often the outcome is published (a
 * redelivered upload, a copy of the event under a new id, a replay from the dead-letter topic),
 * it is the same event, so the outbox keeps one row and consumers' inboxes drop repeats.
 * A name-based UUID (version 8, SHA-256), since the outbox and CloudEvents want UUID-shaped ids.
 */
export function outcomeEventId(type: string, documentId: string, version: number): string {
  const h = createHash("sha256").update(`${type}\n${documentId}\n${version}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x80;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const hex = h.subarray(0, 16).toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** DocumentProcessed or DocumentFailed for an outcome documents has on record. */
export function outcomeEvent(outcome: ProcessingOutcome): OutboxEvent {
  const { documentId, version } = outcome;
  const at = outcome.recordTime ?? timestampNow();
  const origin = (schema: DescMessage) => ({
    id: outcomeEventId(eventType(schema), documentId, version),
    source: EVENT_SOURCE,
    key: documentId,
    time: timestampDate(at),
  });
  switch (outcome.outcome.case) {
    case "result": {
      const r = outcome.outcome.value;
      return contractEvent(
        DocumentProcessedSchema,
        {
          documentId,
          version,
          mimeType: r.mimeType,
          pages: r.pages,
          wordCount: r.wordCount,
          language: r.language,
          specialty: r.specialty,
          qualityScore: r.quality?.score ?? 0,
          // Occurrences over the whole text: the summary counts all of them, `entities` at most 1000.
          entityCount: r.entitySummary.reduce((n, s) => n + s.count, 0),
          distinctEntityCount: r.entitySummary.length,
          citationCount: r.citations.length,
          processTime: at,
        },
        origin(DocumentProcessedSchema),
      );
    }
    case "failure": {
      const f = outcome.outcome.value;
      return contractEvent(
        DocumentFailedSchema,
        { documentId, version, reason: f.reason, message: f.message, failTime: at },
        origin(DocumentFailedSchema),
      );
    }
    default:
      throw new Error(
        `documents answered an outcome for ${documentId} version ${version} with neither a result nor a failure`,
      );
  }
}
