import type { Kysely } from "kysely";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  DocumentDeletedSchema,
  DocumentUpdatedSchema,
  DocumentUploadedSchema,
} from "../../gen/medmesh/events/v1/document_events_pb.js";
import { Visibility } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { contractEvent, enqueue, type OutboxEvent } from "../../platform/events/index.js";
import type { DocumentRow, DocumentsDB, VersionRow } from "./tables.js";

/** The version's DocumentUploaded event. */
export function uploadedEvent(
  version: Omit<VersionRow, "started_at" | "redriven_at" | "redrives" | "stalled_redrives">,
): OutboxEvent {
  return contractEvent(
    DocumentUploadedSchema,
    {
      documentId: version.document_id,
      version: version.version,
      sha256: version.sha256,
      sizeBytes: BigInt(version.size_bytes),
      mimeType: version.mime_type,
      needsOcr: version.needs_ocr,
      uploadedBy: version.uploaded_by,
      uploadTime: timestampFromDate(new Date(version.created_at)),
    },
    { source: "/medmesh/documents", key: version.document_id },
  );
}

/** Writes DocumentUploaded to the outbox; call it in the transaction that adds the version. */
export async function enqueueUploaded(trx: Kysely<DocumentsDB>, version: VersionRow): Promise<void> {
  await enqueue(trx, uploadedEvent(version));
}

/** Writes DocumentDeleted to the outbox; call it in the transaction that deletes the document. */
export async function enqueueDeleted(trx: Kysely<DocumentsDB>, documentId: string): Promise<void> {
  await enqueue(
    trx,
    contractEvent(
      DocumentDeletedSchema,
      { documentId, deleteTime: timestampFromDate(new Date()) },
      { source: "/medmesh/documents", key: documentId },
    ),
  );
}

/** Writes DocumentUpdated to the outbox; call it in the transaction that changes the metadata. */
export async function enqueueUpdated(trx: Kysely<DocumentsDB>, row: DocumentRow, fields: string[]): Promise<void> {
  await enqueue(
    trx,
    contractEvent(
      DocumentUpdatedSchema,
      {
        documentId: row.id,
        changedFields: fields,
        visibility: row.visibility === "platform" ? Visibility.PLATFORM : Visibility.PRIVATE,
        updateTime: timestampFromDate(new Date(row.updated_at)),
      },
      { source: "/medmesh/documents", key: row.id },
    ),
  );
}
