import type { StatusWriter } from "./status-writer.js";

export type IndexedResult = "no_document" | "changed" | "unchanged";

/**
 * Search has indexed a version: the document moves from PROCESSED to INDEXED, but only when that
 * version is still its current one and processed. A report about older content, or one repeated,
 * changes nothing (the event that carries it is delivered at least once). One statement: every
 * indexed document passes here.
 */
export async function recordIndexed(status: StatusWriter, documentId: string, version: number): Promise<IndexedResult> {
  const res = await status.advance(documentId, version, "processed", "indexed");
  return res === "moved" ? "changed" : res;
}
