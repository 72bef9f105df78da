import { DocumentService, DocumentType, type UploadRequest } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import type { Persona, TestIdentity } from "./identity.js";

/** What the documents tests share: clients signed in as a persona, and small uploads. */

export type DocumentsClient = ReturnType<typeof createMeshClient<typeof DocumentService>>;

/** A file documents takes for a PDF (magic bytes, trailer) without being a real one to analyse. */
export const tinyPdf = (text: string) =>
  Buffer.from(`%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n% ${text}\n${"x".repeat(3000)}\n%%EOF\n`);

/** An Upload stream creating a research paper from one chunk; `document` adds or overrides fields. */
export async function* uploadOf(
  title: string,
  bytes: Buffer,
  document: Record<string, unknown> = {},
): AsyncIterable<UploadRequest> {
  yield {
    part: {
      case: "header",
      value: { document: { title, documentType: DocumentType.RESEARCH_PAPER, ...document }, filename: "p.pdf" },
    },
  } as never;
  yield { part: { case: "chunk", value: bytes } } as never;
}

/**
 * Documents clients for the personas of a test identity, at whatever address the test serves on;
 * `closeAll` in afterAll closes every one handed out.
 */
export function personaClients(identity: () => TestIdentity, address: () => string, defaultTimeoutMs = 30_000) {
  const open: DocumentsClient[] = [];
  return {
    async as(who: Persona, target = address()): Promise<DocumentsClient> {
      const c = createMeshClient(DocumentService, target, { headers: await identity().bearer(who), defaultTimeoutMs });
      open.push(c);
      return c;
    },
    closeAll() {
      for (const c of open.splice(0)) c.close();
    },
  };
}
