import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  DocumentSchema,
  DocumentType,
  ProcessingStatus,
  Visibility,
  type Document,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import type { DocumentRow, OutcomeRow, StatusRow, VersionRow } from "./store.js";
import {
  DocumentVersionSchema,
  FailureReason,
  ProcessingFailureSchema,
  ProcessingOutcomeSchema,
  ProcessingResultSchema,
  WatchDocumentResponseSchema,
  type DocumentVersion,
  type ProcessingFailure,
  type ProcessingOutcome,
  type WatchDocumentResponse,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import { fromBinary } from "@bufbuild/protobuf";
import { enumNames } from "../../platform/grpc/enum-names.js";

export const documentTypes = enumNames<DocumentType>(DocumentType, "DocumentType");
export const statuses = enumNames<ProcessingStatus>(ProcessingStatus, "ProcessingStatus");
export const visibilities = enumNames<Visibility>(Visibility, "Visibility");
export const failureReasons = enumNames<FailureReason>(FailureReason, "FailureReason");

function failureOf(reason: string | null, message: string | null): ProcessingFailure | undefined {
  if (!reason) return undefined;
  return create(ProcessingFailureSchema, { reason: failureReasons.value(reason), message: message ?? "" });
}

export function toOutcome(row: OutcomeRow): ProcessingOutcome {
  const failure = failureOf(row.failure_reason, row.failure_message);
  return create(ProcessingOutcomeSchema, {
    documentId: row.document_id,
    version: row.version,
    outcome:
      row.status === "processed" && row.result
        ? { case: "result", value: fromBinary(ProcessingResultSchema, row.result) }
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

/** The regex in the contract admits 2023-02-30; the calendar does not. */
export function isCalendarDate(s: string): boolean {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(s);
  if (!m) return false;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const date = new Date(Date.UTC(y, mo - 1, d));
  return date.getUTCFullYear() === y && date.getUTCMonth() === mo - 1 && date.getUTCDate() === d;
}
