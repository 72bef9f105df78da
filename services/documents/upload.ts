import { Code, ConnectError } from "@connectrpc/connect";
import { nextUnlessAborted } from "../../platform/lifecycle/abortable.js";
import type { DocumentStore } from "./store.js";
import type { UploadHeader, UploadRequest } from "../../gen/medmesh/documents/v1/documents_pb.js";
import {
  BlobIntegrityError,
  BlobStoreError,
  BlobTooLargeError,
  detectContentType,
  SNIFF_BYTES,
  type BlobRef,
  type BlobStore,
  type DetectedType,
} from "../../platform/blobs/index.js";

/** What both upload paths need to store content. */
export interface ContentOptions {
  blobs: BlobStore;
  /** Largest file an upload may carry. */
  maxUploadBytes: number;
  /** Told when a committed change left an event in the outbox, so the relay need not wait to poll. */
  onEvent?: () => void;
}

export interface ReceivedFile {
  header: UploadHeader;
  blob: BlobRef;
  type: DetectedType;
}

/** A size for people: "256 KiB", "100 MiB". */
export function bytesText(n: number): string {
  if (n >= 1024 ** 3) return `${+(n / 1024 ** 3).toFixed(1)} GiB`;
  if (n >= 1024 * 1024) return `${+(n / 1024 / 1024).toFixed(1)} MiB`;
  if (n >= 1024) return `${+(n / 1024).toFixed(1)} KiB`;
  return `${n} bytes`;
}

/** Removes a stored blob nobody turned out to need; identical content may still belong to a version. */
export async function discardUnlessUsed(store: DocumentStore, blobs: BlobStore, blob: BlobRef): Promise<void> {
  if (!(await store.blobInUse(blob.sha256))) await blobs.delete(blob.key);
}

/**
 * Throws `canceled` if the call has been cancelled. Called last before the version is written
 * (inside the transaction that writes it, where there is one), so that a caller that gave up does
 * not find a version it never finished uploading. node:http2 reports a
 * reset stream as ended first and as cancelled just after, and the gateway forwards a client's
 * reset just after its last bytes; checking once before the transaction leaves that gap open.
 */
export function unlessCancelled(signal: AbortSignal): void {
  if (signal.aborted) throw new ConnectError("the upload was cancelled", Code.Canceled);
}

function invalid(message: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument);
}

/** The declared type, if any, must agree with what the bytes are (a PDF is not text/plain). */
export function contradicts(declared: string, detected: DetectedType): boolean {
  const d = declared.split(";")[0]!.trim().toLowerCase();
  if (d === "" || d === "application/octet-stream") return false;
  if (d === "application/pdf") return detected.kind !== "pdf";
  if (d === "text/html" || d === "application/xhtml+xml") return detected.kind !== "html";
  if (d.startsWith("image/")) return detected.kind !== "image";
  if (d.startsWith("text/")) return detected.kind !== "text" && detected.kind !== "html";
  return false;
}

/**
 * Reads an Upload stream: the header, then the bytes straight into the blob store. The first
 * bytes are held back only until the type can be told, so an unacceptable file is refused
 * before anything is written; the rest streams through without being held. A cancelled or
 * refused stream leaves no blob behind (the store removes its partial temp file).
 */
export async function receiveUpload(
  requests: AsyncIterable<UploadRequest>,
  blobs: BlobStore,
  opts: {
    maxBytes: number;
    signal: AbortSignal;
    authorize: (header: UploadHeader) => Promise<void>;
    /** Removes a stored blob that turned out not to be wanted (unless another version uses it). */
    discard: (blob: BlobRef) => Promise<void>;
  },
): Promise<ReceivedFile> {
  const it = requests[Symbol.asyncIterator]();
  const first = await it.next();
  if (first.done || first.value.part.case !== "header")
    throw invalid("the first message of an upload must be its header");
  const header = first.value.part.value;
  // Who may upload what is settled before a single byte is read.
  await opts.authorize(header);

  // A cancelled call may leave the request stream silent forever; waiting on it must end when the
  // call does, so the store gets to remove its partial file.
  const nextChunk = async (): Promise<Uint8Array | undefined> => {
    const r = await nextUnlessAborted(
      it,
      opts.signal,
      () => new ConnectError("the upload was cancelled", Code.Canceled),
    );
    if (r.done) return undefined;
    if (r.value.part.case !== "chunk") throw invalid("only the first message of an upload may be a header");
    return r.value.part.value;
  };

  const head: Uint8Array[] = [];
  let headBytes = 0;
  let ended = false;
  while (headBytes < SNIFF_BYTES) {
    const c = await nextChunk();
    if (!c) {
      ended = true;
      break;
    }
    head.push(c);
    headBytes += c.length;
  }
  if (headBytes === 0) throw invalid("the file is empty");
  const type = detectContentType(Buffer.concat(head).subarray(0, SNIFF_BYTES));
  if (type.kind === "unknown")
    throw invalid(`this file cannot be accepted: ${type.reason ?? "its type is not supported"}`);
  if (contradicts(header.declaredMimeType, type)) {
    throw invalid(`the file was declared as ${header.declaredMimeType} but its content is ${type.mime}`);
  }

  async function* rest(): AsyncIterable<Uint8Array> {
    yield* head;
    if (ended) return;
    for (let c = await nextChunk(); c; c = await nextChunk()) yield c;
  }

  try {
    const blob = await blobs.put(rest(), {
      signal: opts.signal,
      maxBytes: opts.maxBytes,
      expectedSha256: header.sha256 || undefined,
    });
    // A client's cancel can arrive as the end of its stream first and as a cancellation
    // only just after; by the time the bytes are durable the cancellation has arrived, and a
    // cancelled upload must not become a version.
    if (opts.signal.aborted) {
      await opts.discard(blob);
      throw new ConnectError("the upload was cancelled", Code.Canceled);
    }
    return { header, blob, type };
  } catch (err) {
    if (err instanceof ConnectError) throw err;
    if (err instanceof BlobTooLargeError) {
      throw new ConnectError(`the file is larger than the ${bytesText(opts.maxBytes)} limit`, Code.ResourceExhausted);
    }
    if (err instanceof BlobIntegrityError) throw invalid("the file's SHA-256 does not match the sha256 in the header");
    if ((err instanceof BlobStoreError && err.code === "aborted") || opts.signal.aborted)
      throw new ConnectError("the upload was cancelled", Code.Canceled);
    throw err;
  }
}
