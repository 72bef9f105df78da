import { create, createRegistry, fromBinary, toBinary, toJson } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { file_google_rpc_error_details } from "../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";

/**
 * The wire pieces of the Connect protocol (connectrpc.com/docs/protocol) the gateway speaks
 * itself: content types, the timeout header, error codes as strings and as HTTP statuses, the
 * error body, and the envelope and end-of-stream message of streaming calls.
 */

/** What a Connect request's content type (or a GET's encoding parameter) says. */
export interface ConnectType {
  binary: boolean;
  stream: boolean;
}

const contentTypes = /^application\/(connect\+)?(?:(json)(?:; ?charset=utf-?8)?|(proto))$/i;

export function connectTypeOf(contentType: string): ConnectType | undefined {
  const m = contentTypes.exec(contentType);
  return m ? { stream: m[1] !== undefined, binary: m[3] !== undefined } : undefined;
}

export function responseContentType(type: ConnectType): string {
  if (type.stream) return type.binary ? "application/connect+proto" : "application/connect+json";
  return type.binary ? "application/proto" : "application/json";
}

/** connect-timeout-ms in milliseconds; undefined when absent, NaN when it is not up to 10 digits. */
export function connectTimeoutMs(value: string | string[] | undefined): number | undefined {
  if (value === undefined) return undefined;
  return /^\d{1,10}$/.test(String(value)) ? Number(value) : NaN;
}

/** Connect's name of a code: its snake_case spelling. */
const codeNames: Record<number, string> = {};
for (const [name, value] of Object.entries(Code)) {
  if (typeof value === "number")
    codeNames[value] = name.replace(/[A-Z]/g, (c, i: number) => (i ? "_" : "") + c.toLowerCase());
}

export function codeName(code: Code): string {
  return codeNames[code] ?? "unknown";
}

/** The HTTP status of a unary error, as the protocol assigns it to each code. */
export function httpStatusOf(code: Code): number {
  switch (code) {
    case Code.Canceled:
      return 499;
    case Code.InvalidArgument:
    case Code.FailedPrecondition:
    case Code.OutOfRange:
      return 400;
    case Code.DeadlineExceeded:
      return 504;
    case Code.NotFound:
      return 404;
    case Code.AlreadyExists:
    case Code.Aborted:
      return 409;
    case Code.PermissionDenied:
      return 403;
    case Code.ResourceExhausted:
      return 429;
    case Code.Unimplemented:
      return 501;
    case Code.Unavailable:
      return 503;
    case Code.Unauthenticated:
      return 401;
    default:
      return 500;
  }
}

export interface DetailJson {
  type: string;
  value: string;
  debug?: unknown;
}

export interface ErrorJson {
  code: string;
  message?: string;
  details?: DetailJson[];
}

/** Unpadded standard base64, as Connect writes detail values. */
const rawBase64 = (bytes: Uint8Array) =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("base64").replace(/=+$/, "");

// The standard error details (google/rpc/error_details.proto), which a detail's debug shows readably.
const knownDetails = createRegistry(file_google_rpc_error_details);

/**
 * The details of a gRPC status as Connect carries them: each google.protobuf.Any of the
 * google.rpc.Status in grpc-status-details-bin, named by its type and base64, and for the
 * standard details a readable copy (debug), as connect-node writes for details it made itself.
 * A header that does not decode gives no details rather than failing the answer.
 */
export function detailsFromGrpc(header: string | string[] | undefined): DetailJson[] {
  if (typeof header !== "string" || header === "") return [];
  try {
    const status = fromBinary(StatusSchema, Buffer.from(header, "base64"));
    return status.details.map((any) => {
      const type = any.typeUrl.slice(any.typeUrl.lastIndexOf("/") + 1);
      const detail: DetailJson = { type, value: rawBase64(any.value) };
      const schema = knownDetails.getMessage(type);
      if (schema) {
        try {
          detail.debug = toJson(schema, fromBinary(schema, any.value));
        } catch {
          // Only a readable copy; the value is what counts.
        }
      }
      return detail;
    });
  } catch {
    return [];
  }
}

/** The error body of a unary call, and the error of an end-of-stream message. */
export function errorJson(code: Code, message: string, details: DetailJson[]): ErrorJson {
  const out: ErrorJson = { code: codeName(code) };
  if (message) out.message = message;
  if (details.length > 0) out.details = details;
  return out;
}

/** The details of an error the gateway raised itself (a rate limit's retry delay, say). */
export function detailsOfError(err: ConnectError): DetailJson[] {
  return err.details.map((d) => {
    if (!("desc" in d)) return { type: d.type, value: rawBase64(d.value) };
    const message = create(d.desc, d.value);
    const json: DetailJson = { type: d.desc.typeName, value: rawBase64(toBinary(d.desc, message)) };
    try {
      json.debug = toJson(d.desc, message);
    } catch {
      // Only a readable copy; the value above is what counts.
    }
    return json;
  });
}

/** A 5-byte prefixed envelope: gRPC's frame and Connect's streaming envelope are the same. */
export function envelope(flags: number, payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + payload.length);
  out[0] = flags;
  out.writeUInt32BE(payload.length, 1);
  out.set(payload, 5);
  return out;
}

/** Flag of the last envelope of a Connect stream, which carries the status and the trailers. */
export const END_STREAM = 0x02;

/** The end-of-stream envelope: the error (none for success) and the trailers as metadata. */
export function endStream(error: ErrorJson | undefined, trailers: Record<string, string>): Buffer {
  const body: { error?: ErrorJson; metadata?: Record<string, string[]> } = {};
  if (error) body.error = error;
  const keys = Object.keys(trailers);
  if (keys.length > 0) {
    body.metadata = {};
    for (const k of keys) body.metadata[k] = trailers[k]!.split(/,\s*/);
  }
  return envelope(END_STREAM, Buffer.from(JSON.stringify(body)));
}

/**
 * Splits a byte stream into whole 5-byte prefixed messages as chunks arrive. Messages are
 * copied only when split across chunks.
 */
export class EnvelopeReader {
  private pending: Buffer | undefined;

  constructor(private readonly maxBytes: number) {}

  /**
   * Hands each whole envelope in `chunk` (with what came before it) to `each`; returns the
   * announced length of the first one over the limit, or -1 when all fit.
   */
  push(chunk: Buffer, each: (flags: number, payload: Buffer) => void): number {
    const buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = undefined;
    let at = 0;
    while (buf.length - at >= 5) {
      const length = buf.readUInt32BE(at + 1);
      if (length > this.maxBytes) return length;
      if (buf.length - at - 5 < length) break;
      each(buf[at]!, buf.subarray(at + 5, at + 5 + length));
      at += 5 + length;
    }
    if (at < buf.length) this.pending = Buffer.from(buf.subarray(at));
    return -1;
  }

  /** True when no part of a message is waiting for the rest of it. */
  get atBoundary(): boolean {
    return this.pending === undefined;
  }
}
