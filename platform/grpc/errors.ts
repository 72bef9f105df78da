import { Code, ConnectError } from "@connectrpc/connect";
import { findTrailerError, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import type { OutgoingHttpHeaders } from "node:http2";
import { Metadata, type ServiceError } from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import {
  BadRequest_FieldViolationSchema,
  BadRequestSchema,
  RetryInfoSchema,
} from "../../gen/google/rpc/error_details_pb.js";
import { isConnectionLost } from "../db/errors.js";
import { logger } from "../telemetry/logger.js";
import { isTransportHeader, metadataToHeaders } from "./metadata.js";
import { encodeGrpcMessage } from "./wire.js";

/**
 * Every error that leaves a handler becomes a ConnectError with a sentence meant for the caller.
 * A lost database connection is `unavailable`. Anything else is a bug on our side: it is logged
 * with its stack, and the caller only learns that something failed inside, never how.
 */
export function toConnectError(err: unknown, where?: string, signal?: AbortSignal): ConnectError {
  if (err instanceof ConnectError) return err;
  if (isAbort(err)) {
    // An AbortError says only that a signal fired; why it fired is the status the caller is
    // owed. A handler sleeping on its call's signal is woken by the deadline as often as by a
    // cancellation, and node's AbortError carries the signal's reason as its cause.
    const why = (err as Error).cause ?? (signal?.aborted ? signal.reason : undefined);
    if (why instanceof ConnectError) return why;
    return new ConnectError("the call was cancelled", Code.Canceled);
  }
  if (isConnectionLost(err)) {
    // Not a bug of ours and not the caller's: the database went away mid-call or cannot be
    // reached. The caller may retry; the cause stays attached (never sent) so the server can
    // re-check its health at once (platform/grpc/server.ts).
    logger.warn("database unreachable during a call", { where, error: describe(err).message });
    return new ConnectError(
      "the database is unreachable right now; try again shortly",
      Code.Unavailable,
      undefined,
      undefined,
      err,
    );
  }
  logger.error("unexpected error in handler", { where, error: describe(err) });
  return new ConnectError("internal error; it has been logged", Code.Internal);
}

function isAbort(err: unknown): boolean {
  return err instanceof Error && (err.name === "AbortError" || err.name === "TimeoutError");
}

function describe(err: unknown): { message: string; stack?: string } {
  if (err instanceof Error) return { message: err.message, stack: err.stack };
  return { message: String(err) };
}

/**
 * A call's final status as HTTP/2 trailers: grpc-status, grpc-message (percent-encoded as the
 * gRPC spec says), google.rpc.Status details as grpc-status-details-bin, and the trailer metadata
 * the handler set, then the error's own metadata on top.
 */
export function statusTrailers(err: unknown, trailer?: Headers): OutgoingHttpHeaders {
  const ce = toConnectError(err);
  const out: OutgoingHttpHeaders = {};
  trailer?.forEach((v, k) => {
    if (!isTransportHeader(k)) out[k] = v;
  });
  ce.metadata.forEach((v, k) => {
    if (!isTransportHeader(k)) out[k] = v;
  });
  out["grpc-status"] = String(ce.code);
  out["grpc-message"] = encodeGrpcMessage(ce.rawMessage);
  if (ce.details.length > 0) {
    const withDetails = new Headers();
    setTrailerStatus(withDetails, ce);
    const details = withDetails.get("grpc-status-details-bin");
    if (details) out["grpc-status-details-bin"] = details;
  }
  return out;
}

/** Metadata a handler set (Fetch Headers) as HTTP/2 headers, leaving out what the transport owns. */
export function headerRecord(headers: Headers): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  headers.forEach((v, k) => {
    if (!isTransportHeader(k)) out[k] = v;
  });
  return out;
}

/** A grpc-js client error back into a ConnectError, keeping rich details when the server sent them. */
export function fromGrpcError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  const se = err as Partial<ServiceError>;
  if (typeof se?.code !== "number") return toConnectError(err);
  const md = se.metadata ?? new Metadata();
  const headers = metadataToHeaders(md);
  const bin = md.get("grpc-status-details-bin")[0];
  headers.set("grpc-status", String(se.code));
  headers.set("grpc-message", encodeURIComponent(se.details ?? ""));
  if (bin) headers.set("grpc-status-details-bin", Buffer.from(bin as Buffer).toString("base64"));
  const found = findTrailerError(headers);
  if (found) {
    const plain = metadataToHeaders(md);
    const err = new ConnectError(found.rawMessage, found.code, plain, undefined, found.cause);
    err.details.push(...found.details);
    return err;
  }
  return new ConnectError(se.details ?? "upstream failed", se.code as unknown as Code, headers);
}

export interface FieldViolation {
  field: string;
  description: string;
}

/** invalid_argument with google.rpc.BadRequest details, one per offending field. */
export function invalidArgument(violations: FieldViolation[]): ConnectError {
  const sentence =
    violations.length === 1
      ? `invalid request: ${violations[0]!.field}: ${violations[0]!.description}`
      : `invalid request: ${violations.map((v) => `${v.field}: ${v.description}`).join("; ")}`;
  return new ConnectError(sentence, Code.InvalidArgument, undefined, [
    {
      desc: BadRequestSchema,
      value: create(BadRequestSchema, {
        fieldViolations: violations.map((v) => create(BadRequest_FieldViolationSchema, v)),
      }),
    },
  ]);
}

/** resource_exhausted with google.rpc.RetryInfo so clients know when to come back. */
export function resourceExhausted(message: string, retryAfterMs: number): ConnectError {
  const seconds = BigInt(Math.floor(retryAfterMs / 1000));
  const nanos = (retryAfterMs % 1000) * 1_000_000;
  return new ConnectError(message, Code.ResourceExhausted, undefined, [
    {
      desc: RetryInfoSchema,
      value: create(RetryInfoSchema, { retryDelay: { seconds, nanos } }),
    },
  ]);
}
