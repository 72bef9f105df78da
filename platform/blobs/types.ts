import type { Readable } from "node:stream";

/** What a successful put tells the caller: enough to record a document version. */
export interface BlobRef {
  /** Lower-case hex SHA-256 of the content; also the key for content-addressed stores. */
  sha256: string;
  size: number;
  key: string;
}

/**
 * Anything a put can read from. Node Readables and WHATWG ReadableStreams are both async
 * iterables of chunks, so callers (gRPC client streams, HTTP bodies, files) pass them as they are.
 */
export type BlobSource = AsyncIterable<Uint8Array> | Iterable<Uint8Array> | ReadableStream<Uint8Array> | Uint8Array;

export interface PutOptions {
  /** Cancels the put; the store then leaves nothing behind, not even a partial temp object. */
  signal?: AbortSignal;
  /** Overrides the store's limit for this put only (it cannot exceed the store's own limit). */
  maxBytes?: number;
  /** When the uploader already knows the digest, a mismatch fails the put instead of storing. */
  expectedSha256?: string;
}

export interface GetOptions {
  signal?: AbortSignal;
  /** Inclusive byte range, as in HTTP Range and S3 GetObject, so resumable reads map directly. */
  range?: { start: number; end?: number };
}

/**
 * A store of immutable blobs. Deliberately small and stream-shaped so an S3-compatible store can
 * implement it with PutObject/multipart upload, GetObject, HeadObject and DeleteObject
 * (see README.md in this folder).
 */
export interface BlobStore {
  /** Streams the source into the store; resolves once the blob is durable. */
  put(source: BlobSource, opts?: PutOptions): Promise<BlobRef>;
  /** Rejects with BlobNotFoundError before any byte is streamed if the key is unknown. */
  get(key: string, opts?: GetOptions): Promise<Readable>;
  /** Size of the blob, or undefined when it does not exist. */
  stat(key: string): Promise<{ size: number } | undefined>;
  exists(key: string): Promise<boolean>;
  /** Resolves true if something was deleted, false if the key was already absent. */
  delete(key: string): Promise<boolean>;
}

export type BlobErrorCode = "too_large" | "not_found" | "invalid_key" | "aborted" | "integrity";

export class BlobStoreError extends Error {
  constructor(
    readonly code: BlobErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "BlobStoreError";
  }
}

export class BlobTooLargeError extends BlobStoreError {
  constructor(readonly limit: number) {
    super("too_large", `The content exceeds the maximum blob size of ${limit} bytes.`);
    this.name = "BlobTooLargeError";
  }
}

export class BlobNotFoundError extends BlobStoreError {
  constructor(readonly key: string) {
    super("not_found", `No blob is stored under key ${key}.`);
    this.name = "BlobNotFoundError";
  }
}

export class InvalidBlobKeyError extends BlobStoreError {
  constructor(readonly key: string) {
    super("invalid_key", "A blob key must be 64 lower-case hexadecimal characters (a SHA-256 digest).");
    this.name = "InvalidBlobKeyError";
  }
}

export class BlobAbortedError extends BlobStoreError {
  constructor(cause?: unknown) {
    super("aborted", "The blob upload was cancelled; nothing was stored.", { cause });
    this.name = "BlobAbortedError";
  }
}

export class BlobIntegrityError extends BlobStoreError {
  constructor(
    readonly expected: string,
    readonly actual: string,
  ) {
    super("integrity", `The content's SHA-256 is ${actual}, but ${expected} was expected; nothing was stored.`);
    this.name = "BlobIntegrityError";
  }
}

const KEY_PATTERN = /^[0-9a-f]{64}$/;

/** Keys reach the filesystem as path segments, so anything but a digest is refused up front. */
export function assertBlobKey(key: string): void {
  if (!KEY_PATTERN.test(key)) throw new InvalidBlobKeyError(key);
}
