import { randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { DocumentSchema, type UploadHeader } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { Role } from "../../gen/medmesh/access/v1/access_pb.js";
import { invalidArgument, type FieldViolation } from "../../platform/grpc/errors.js";
import type { Principal } from "../../platform/grpc/interceptors/access.js";
import { check } from "../../platform/grpc/interceptors/validation.js";
import { isCalendarDate, toColumns } from "./model.js";
import type { DocumentStore } from "./store.js";
import type { DocumentRow, NewDocument } from "./tables.js";

export const isAdmin = (p: Principal) => p.role === Role.ADMIN;

/**
 * Platform documents are for every signed-in user; private ones for their uploader and admins.
 * Mesh services (the processing worker) read every document: processing is the platform's own work.
 */
function canSee(p: Principal, row: Pick<DocumentRow, "visibility" | "uploaded_by">): boolean {
  return row.visibility === "platform" || row.uploaded_by === p.subject || isAdmin(p) || p.role === Role.SERVICE;
}

function canChange(p: Principal, row: DocumentRow): boolean {
  return row.uploaded_by === p.subject || isAdmin(p);
}

export function notFound(id: string): ConnectError {
  return new ConnectError(`document ${id} does not exist`, Code.NotFound);
}

export function checkDates(fields: Array<[string, string]>): void {
  const bad: FieldViolation[] = fields
    .filter(([, v]) => v !== "" && !isCalendarDate(v))
    .map(([field, v]) => ({ field, description: `${v} is not a date in the calendar` }));
  if (bad.length) throw invalidArgument(bad);
}

/** The ownership rules of documents, shared by every handler that touches one. */
export class DocumentAccess {
  constructor(private readonly store: DocumentStore) {}

  async ensureDoiFree(doi: string | null, exceptId?: string): Promise<void> {
    if (!doi) return;
    if (await this.store.findLiveByDoi(doi, exceptId)) {
      throw new ConnectError(`a document with DOI ${doi} already exists`, Code.AlreadyExists);
    }
  }

  /**
   * The live document if the caller may see it. A private document of someone else is reported
   * exactly like a missing one, so ids cannot be probed for existence.
   */
  async visible(id: string, caller: Principal): Promise<DocumentRow> {
    const row = await this.store.findLive(id);
    if (!row || !canSee(caller, row)) throw notFound(id);
    return row;
  }

  /** Whether the caller may see a document already read, e.g. again while watching it. */
  sees(caller: Principal, row: Pick<DocumentRow, "visibility" | "uploaded_by">): boolean {
    return canSee(caller, row);
  }

  async changeable(id: string, caller: Principal): Promise<DocumentRow> {
    const row = await this.visible(id, caller);
    if (!canChange(caller, row)) {
      throw new ConnectError("only the uploader or an admin may change this document", Code.PermissionDenied);
    }
    return row;
  }

  /**
   * Settles what an upload header asks for before any byte is accepted: a version of a document
   * the caller may change, or a new document (returned, not yet stored) described well enough.
   */
  async uploadTarget(
    header: UploadHeader,
    caller: Principal,
    field = "header",
  ): Promise<{ id: string } | { create: NewDocument }> {
    if (header.documentId) {
      await this.changeable(header.documentId, caller);
      return { id: header.documentId };
    }
    const doc = header.document;
    if (!doc)
      throw invalidArgument([
        { field: `${field}.document`, description: "name a document_id, or describe the new document" },
      ]);
    const fields = toColumns(doc);
    if (fields.title === "")
      throw invalidArgument([{ field: `${field}.document.title`, description: "title must not be blank" }]);
    if (!doc.documentType)
      throw invalidArgument([{ field: `${field}.document.document_type`, description: "document_type is required" }]);
    check(DocumentSchema, doc);
    checkDates([[`${field}.document.publication_date`, doc.publicationDate]]);
    await this.ensureDoiFree(fields.doi);
    return { create: { id: randomUUID(), uploaded_by: caller.subject, ...fields } };
  }
}
