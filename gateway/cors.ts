import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { cors as connectCors } from "@connectrpc/connect";
import { refuse } from "./rpc-handler.js";

type Req = IncomingMessage | Http2ServerRequest;
type Res = ServerResponse | Http2ServerResponse;

const allowHeaders = [...connectCors.allowedHeaders, "Authorization", "Traceparent", "Tracestate"].join(", ");
const exposeHeaders = [...connectCors.exposedHeaders, "Traceparent"].join(", ");
const allowMethods = connectCors.allowedMethods.join(", ");

/**
 * CORS for an explicit allow-list of origins. A listed origin gets the headers Connect and
 * gRPC-web need. Any other origin is refused outright, preflight or not: a browser sends some
 * calls without asking first (a Connect GET with no token or timeout is a "simple" request) and
 * only hides the answer from the page, so leaving the refusal to the browser would still let any
 * web page run them against the services. A page the gateway's own host serves is not
 * cross-origin and needs no listing.
 * Returns true when the request has been answered (a preflight, or a refusal).
 */
export function applyCors(allowed: ReadonlySet<string>, req: Req, res: Res): boolean {
  const origin = req.headers.origin;
  if (typeof origin !== "string") return false;
  const ok = allowed.has("*") || allowed.has(origin) || sameHost(origin, req);
  const preflight = req.method === "OPTIONS" && req.headers["access-control-request-method"] !== undefined;
  if (!ok) {
    refuse(
      res,
      403,
      "permission_denied",
      `origin ${origin} is not allowed to call this gateway (CORS_ALLOWED_ORIGINS)`,
    );
    return true;
  }
  res.setHeader("Access-Control-Allow-Origin", origin);
  res.setHeader("Vary", "Origin");
  res.setHeader("Access-Control-Expose-Headers", exposeHeaders);
  if (!preflight) return false;
  res.writeHead(204, {
    "Access-Control-Allow-Methods": allowMethods,
    "Access-Control-Allow-Headers": allowHeaders,
    "Access-Control-Max-Age": "7200",
  });
  res.end();
  return true;
}

/**
 * Whether the page is served from the host the request was sent to. The scheme is not compared:
 * behind a TLS-terminating proxy the gateway cannot know the one the browser used.
 */
function sameHost(origin: string, req: Req): boolean {
  const host = req.headers.host ?? req.headers[":authority"];
  if (typeof host !== "string") return false;
  try {
    return new URL(origin).host === host.toLowerCase();
  } catch {
    return false;
  }
}
