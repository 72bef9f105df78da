import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { cors as connectCors } from "@connectrpc/connect";

type Req = IncomingMessage | Http2ServerRequest;
type Res = ServerResponse | Http2ServerResponse;

const allowHeaders = [...connectCors.allowedHeaders, "Authorization", "Traceparent", "Tracestate"].join(", ");
const exposeHeaders = [...connectCors.exposedHeaders, "Traceparent"].join(", ");
const allowMethods = connectCors.allowedMethods.join(", ");

/**
 * CORS for an explicit allow-list of origins. A listed origin gets the headers Connect and
 * gRPC-web need; anything else gets none, so the browser refuses the response.
 * Returns true when the request was a preflight and has been answered.
 */
export function applyCors(allowed: ReadonlySet<string>, req: Req, res: Res): boolean {
  const origin = req.headers.origin;
  if (typeof origin !== "string") return false;
  const ok = allowed.has("*") || allowed.has(origin);
  const preflight = req.method === "OPTIONS" && req.headers["access-control-request-method"] !== undefined;
  if (ok) {
    res.setHeader("Access-Control-Allow-Origin", origin);
    res.setHeader("Vary", "Origin");
    res.setHeader("Access-Control-Expose-Headers", exposeHeaders);
  }
  if (!preflight) return false;
  if (!ok) {
    res.writeHead(403, { "content-type": "text/plain" });
    res.end(`origin ${origin} is not allowed\n`);
    return true;
  }
  res.writeHead(204, {
    "Access-Control-Allow-Methods": allowMethods,
    "Access-Control-Allow-Headers": allowHeaders,
    "Access-Control-Max-Age": "7200",
  });
  res.end();
  return true;
}
