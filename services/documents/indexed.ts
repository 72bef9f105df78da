import { lockLiveDocument } from "./store.js";
import type { StatusWriter } from "./status-writer.js";

export type IndexedResult = "no_document" | "changed" | "unchanged";

/**
 * Search has indexed a version: the document moves from PROCESSED to INDEXED, but only when that
 * version is still its current one and processed. A report about older content, or one repeated,
 * changes nothing (the event that carries it is delivered at least once).
 */
export async function recordIndexed(status: StatusWriter, documentId: string, version: number): Promise<IndexedResult> {
  return status.transaction(async (trx, setStatus) => {
    const doc = await lockLiveDocument(trx, documentId);
    if (!doc) return "no_document";
    if (doc.version !== version || doc.processing_status !== "processed") return "unchanged";
    await setStatus({ documentId, version, status: "indexed" });
    return "changed";
  });
}
