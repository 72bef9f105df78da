import type { Kysely } from "kysely";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { DocumentUploadedSchema } from "../../gen/medmesh/events/v1/document_events_pb.js";
import { enqueue, protobufContentType } from "../../platform/events/index.js";
import type { DocumentsDB, VersionRow } from "./tables.js";

export const DOCUMENT_EVENTS_TOPIC = "document.events";

/** Writes DocumentUploaded to the outbox; call it in the transaction that adds the version. */
export async function enqueueUploaded(trx: Kysely<DocumentsDB>, version: VersionRow): Promise<void> {
  await enqueue(trx, {
    topic: DOCUMENT_EVENTS_TOPIC,
    type: "medmesh.document.uploaded.v1",
    source: "/medmesh/documents",
    key: version.document_id,
    contentType: protobufContentType(DocumentUploadedSchema.typeName),
    payload: toBinary(
      DocumentUploadedSchema,
      create(DocumentUploadedSchema, {
        documentId: version.document_id,
        version: version.version,
        sha256: version.sha256,
        sizeBytes: BigInt(version.size_bytes),
        mimeType: version.mime_type,
        needsOcr: version.needs_ocr,
        uploadedBy: version.uploaded_by,
        uploadTime: timestampFromDate(new Date(version.created_at)),
      }),
    ),
  });
}
