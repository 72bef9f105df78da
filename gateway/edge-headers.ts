import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import { Code, ConnectError, decodeBinaryHeader } from "@connectrpc/connect";
import { CLIENT_ADDRESS_HEADER } from "../platform/auth/client-address.js";
import { isTransportHeader } from "../platform/grpc/metadata.js";

/**
 * Which request headers travel inward as gRPC metadata, and which upstream metadata travels
 * back out. The gateway is a proxy: what describes one hop (this TCP connection, this HTTP
 * version) must not be replayed on the next one. node:http2 refuses to send connection-specific
 * headers at all, and grpc-js treats that refusal as "the call never started" and retries it at
 * once, for as long as the deadline lasts; so anything that cannot be sent is removed or refused
 * here, before grpc-js sees it.
 */

// Hop-by-hop headers (RFC 9110 7.6.1), the HTTP/1.1 upgrade handshake (curl --http2 sends
// Upgrade and HTTP2-Settings), and TE, which gRPC sets itself on every hop.
const hopByHop = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "http2-settings",
]);

// Describe the HTTP exchange with this gateway, not the call: the body's framing and
// compression, the host that was addressed, the date of a message.
const messageLevel = new Set(["host", "content-length", "content-encoding", "expect", "date"]);

// Browser context that means nothing to a service. Cookies included: the mesh authenticates
// with bearer tokens only, so a cookie is the browser's session with something else on this
// origin, and forwarding it would spread a credential no service reads into its logs and spans.
const browserOnly = new Set([
  "origin",
  "referer",
  "cookie",
  "accept",
  "accept-language",
  "x-grpc-web",
  "x-user-agent",
  "priority",
  "pragma",
  "cache-control",
]);

// What gRPC allows as a metadata key and as a text value (the rules grpc-js enforces).
const legalKey = /^[0-9a-z_.-]+$/;
const legalText = /^[\x20-\x7e]*$/;

/** Header names listed in a Connection header are hop-by-hop too, whatever they are called. */
function connectionNamed(headers: Headers): Set<string> {
  const named = new Set<string>();
  for (const token of (headers.get("connection") ?? "").split(",")) {
    const t = token.trim().toLowerCase();
    if (t) named.add(t);
  }
  return named;
}

function belongsToHop(key: string, named: Set<string>): boolean {
  return (
    hopByHop.has(key) ||
    named.has(key) ||
    messageLevel.has(key) ||
    // grpc-* is reserved for the gRPC transport (timeouts, encodings, status, retry bookkeeping).
    key.startsWith("grpc-") ||
    isTransportHeader(key)
  );
}

/**
 * A header the caller meant for the service must reach it as it was sent: a value gRPC metadata
 * cannot carry is refused, naming the header, rather than dropped or mangled.
 */
function assertCarriable(key: string, value: string): void {
  if (key.endsWith("-bin")) {
    for (const part of value.split(",")) {
      try {
        decodeBinaryHeader(part.trim());
      } catch {
        throw new ConnectError(`header ${key} must be base64, as every -bin header`, Code.InvalidArgument);
      }
    }
  } else if (!legalText.test(value)) {
    throw new ConnectError(
      `header ${key} carries characters gRPC metadata cannot; send it base64 in a header named ${key}-bin`,
      Code.InvalidArgument,
    );
  }
}

/**
 * The request headers a call forwards as metadata: authorization, custom headers, everything
 * the caller meant for the service. Headers that describe the hop are left behind silently, as
 * any proxy does, and so are names gRPC cannot carry. A header the caller did mean for the
 * service but whose value gRPC cannot carry is refused with invalid_argument, naming it: dropping
 * it would change what the call means.
 * traceparent and tracestate are left out too: the gateway's own client span issues them anew.
 */
export function forwardableHeaders(request: Headers): Headers {
  const named = connectionNamed(request);
  const out = new Headers();
  request.forEach((value, key) => {
    if (belongsToHop(key, named) || browserOnly.has(key) || key.startsWith("sec-")) return;
    if (!legalKey.test(key) || key === "traceparent" || key === "tracestate") return;
    assertCarriable(key, value);
    out.set(key, value);
  });
  return out;
}

// Headers in which the gateway speaks to the services for the mesh (platform/auth/client-address.ts).
// A caller from outside must never be heard in them, whatever it sends.
const meshOnly = [CLIENT_ADDRESS_HEADER];

/**
 * Removes every mesh-only header a caller sent, before the call is handled; the gateway then
 * adds its own statements (gateway/client-address.ts). Services check the signature as well,
 * so a copy that slipped through would still not be believed; this keeps it from travelling.
 */
export function dropMeshOnlyHeaders(request: Headers): void {
  for (const key of meshOnly) request.delete(key);
}

/** Upstream headers and trailers worth passing back: the service's own, not its transport's. */
export function returnableHeaders(upstream: Headers, into: Headers): void {
  const named = connectionNamed(upstream);
  upstream.forEach((value, key) => {
    if (!belongsToHop(key, named)) into.set(key, value);
  });
}

// ---- the same rules over node's header records, for calls passed through undecoded ----

// grpc-* belongs to the hop, except the encodings: a passed-through frame stays compressed as
// the caller compressed it, so the service must hear which codec that was, and the caller which
// one the service answers with.
const frameEncodings = new Set(["grpc-encoding", "grpc-accept-encoding"]);

/**
 * forwardableHeaders for a request passed through: node's header record in, the upstream
 * request's header record out (written into `into`). Mesh-only headers are dropped here too.
 */
export function forwardableHeaderRecord(request: IncomingHttpHeaders, into: OutgoingHttpHeaders): void {
  const connection = request.connection;
  const named = connection ? connectionNamed(new Headers({ connection: String(connection) })) : noNames;
  for (const key in request) {
    const raw = request[key];
    if (raw === undefined) continue;
    const value = Array.isArray(raw) ? raw.join(", ") : raw;
    if (frameEncodings.has(key)) {
      into[key] = value;
      continue;
    }
    if (belongsToHop(key, named) || browserOnly.has(key) || key.startsWith("sec-")) continue;
    if (!legalKey.test(key) || key === "traceparent" || key === "tracestate" || meshOnly.includes(key)) continue;
    assertCarriable(key, value);
    into[key] = value;
  }
}

const noNames = new Set<string>();

/** returnableHeaders over node's header record of an upstream response or its trailers. */
export function returnableHeaderRecord(upstream: IncomingHttpHeaders, into: OutgoingHttpHeaders): void {
  const connection = upstream.connection;
  const named = connection ? connectionNamed(new Headers({ connection: String(connection) })) : noNames;
  for (const key in upstream) {
    const value = upstream[key];
    if (value === undefined) continue;
    if (frameEncodings.has(key) || !belongsToHop(key, named)) into[key] = value;
  }
}
