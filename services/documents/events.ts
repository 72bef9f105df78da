import type { Kysely } from "kysely";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { DocumentUploadedSchema } from "../../gen/medmesh/events/v1/document_events_pb.js";
import { contractEvent, enqueue, type OutboxEvent } from "../../platform/events/index.js";
import type { DocumentsDB, VersionRow } from "./tables.js";

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
