import { create, fromBinary, getOption } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Selectable } from "kysely";
import { field as validationRules } from "../../gen/buf/validate/validate_pb.js";
import {
  DocumentSchema,
  DocumentType,
  DocumentVersionSchema,
  FailureReason,
  ProcessingFailureSchema,
  ProcessingOutcomeSchema,
  ProcessingResultSchema,
  ProcessingStatus,
  UploadPartRequestSchema,
  UploadSessionSchema,
  UploadState,
  Visibility,
  WatchDocumentResponseSchema,
  type Document,
  type DocumentVersion,
  type ProcessingFailure,
  type ProcessingOutcome,
  type ProcessingResult,
  type UploadSession,
  type WatchDocumentResponse,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import { enumNames } from "../../platform/grpc/enum-names.js";
import type { DocumentChanges, DocumentRow, OutcomeRow, StatusRow, UploadSessionTable, VersionRow } from "./tables.js";

export const documentTypes = enumNames<DocumentType>(DocumentType, "DocumentType");
export const statuses = enumNames<ProcessingStatus>(ProcessingStatus, "ProcessingStatus");
export const visibilities = enumNames<Visibility>(Visibility, "Visibility");
export const failureReasons = enumNames<FailureReason>(FailureReason, "FailureReason");

function failureOf(reason: string | null, message: string | null): ProcessingFailure | undefined {
  if (!reason) return undefined;
  return create(ProcessingFailureSchema, { reason: failureReasons.value(reason), message: message ?? "" });
}

/** `decoded`: the row's result as a message already, when the caller has it (it was just recorded). */
export function toOutcome(row: OutcomeRow, decoded?: ProcessingResult): ProcessingOutcome {
  const failure = failureOf(row.failure_reason, row.failure_message);
  return create(ProcessingOutcomeSchema, {
    documentId: row.document_id,
    version: row.version,
    outcome:
      row.status === "processed" && row.result
        ? { case: "result", value: decoded ?? fromBinary(ProcessingResultSchema, row.result) }
        : failure
          ? { case: "failure", value: failure }
          : { case: undefined },
    recordTime: timestampFromDate(new Date(row.created_at)),
  });
}

export function toStatusChange(
  row: Pick<StatusRow, "document_id" | "version" | "status" | "failure_reason" | "failure_message" | "created_at">,
): WatchDocumentResponse {
  return create(WatchDocumentResponseSchema, {
    documentId: row.document_id,
    status: statuses.value(row.status),
    version: row.version,
    failure: failureOf(row.failure_reason, row.failure_message),
    changeTime: timestampFromDate(new Date(row.created_at)),
  });
}

export function toDocument(row: DocumentRow): Document {
  return create(DocumentSchema, {
    id: row.id,
    title: row.title,
    authors: row.authors,
    journal: row.journal ?? "",
    publicationDate: row.publication_date ?? "",
    doi: row.doi ?? "",
    pmid: row.pmid ?? "",
    documentType: documentTypes.value(row.document_type),
    specialty: row.specialty ?? "",
    processingStatus: statuses.value(row.processing_status),
    sizeBytes: BigInt(row.size_bytes),
    mimeType: row.mime_type ?? "",
    uploadedBy: row.uploaded_by,
    visibility: visibilities.value(row.visibility),
    version: row.version,
    metadata: row.metadata,
    createTime: timestampFromDate(new Date(row.created_at)),
    updateTime: timestampFromDate(new Date(row.updated_at)),
  });
}

/**
 * The columns a caller's Document sets, trimmed, with enums by name and empty strings as nulls.
 * Typed against the table, so a column a caller may set cannot be left out here.
 */
export function toColumns(doc: Document): Required<DocumentChanges> {
  return {
    title: doc.title.trim(),
    authors: doc.authors.map((a) => a.trim()),
    journal: doc.journal.trim() || null,
    publication_date: doc.publicationDate || null,
    doi: doc.doi || null,
    pmid: doc.pmid || null,
    document_type: doc.documentType ? documentTypes.name(doc.documentType) : "other",
    specialty: doc.specialty.trim() || null,
    visibility: visibilities.name(doc.visibility || Visibility.PRIVATE),
    metadata: doc.metadata,
  };
}

/** What UpdateDocument may change: exactly the fields a caller sets on create. */
export const editableFields: ReadonlySet<string> = new Set(Object.keys(toColumns(create(DocumentSchema))));

export function toVersion(row: VersionRow): DocumentVersion {
  return create(DocumentVersionSchema, {
    version: row.version,
    sha256: row.sha256,
    sizeBytes: BigInt(row.size_bytes),
    mimeType: row.mime_type,
    needsOcr: row.needs_ocr,
    filename: row.filename,
    uploadedBy: row.uploaded_by,
    createTime: timestampFromDate(new Date(row.created_at)),
  });
}

/** Read from the contract's validation rule, so the number announced and the number enforced agree. */
export const MAX_PART_BYTES = (() => {
  const rules = getOption(UploadPartRequestSchema.field.data, validationRules);
  if (rules.type.case !== "bytes" || !rules.type.value.maxLen)
    throw new Error("UploadPartRequest.data lost its max_len rule in the contract");
  return Number(rules.type.value.maxLen);
})();

export function toSession(row: Selectable<UploadSessionTable>): UploadSession {
  return create(UploadSessionSchema, {
    uploadId: row.id,
    documentId: row.document_id ?? "",
    filename: row.filename,
    sizeBytes: BigInt(row.size_bytes),
    nextOffset: BigInt(row.next_offset),
    state: row.state === "completed" ? UploadState.COMPLETED : UploadState.OPEN,
    maxPartBytes: MAX_PART_BYTES,
    expireTime: timestampFromDate(new Date(row.expires_at)),
    version: row.version ?? 0,
  });
}

/** The regex in the contract admits 2023-02-30; the calendar does not. */
export function isCalendarDate(s: string): boolean {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(s);
  if (!m) return false;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const date = new Date(Date.UTC(y, mo - 1, d));
  return date.getUTCFullYear() === y && date.getUTCMonth() === mo - 1 && date.getUTCDate() === d;
}
