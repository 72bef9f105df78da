import type { IncomingMessage, ServerResponse } from "node:http";
import http2, { type Http2ServerRequest, type Http2ServerResponse } from "node:http2";
import type { DescMethod } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createConnectRouter,
  type ConnectRouter,
  type ConnectRouterOptions,
  type ContextValues,
} from "@connectrpc/connect";
import type { UniversalHandler, UniversalServerRequest, UniversalServerResponse } from "@connectrpc/connect/protocol";
import {
  compressionBrotli,
  compressionGzip,
  universalRequestFromNodeRequest,
  universalResponseToNodeResponse,
} from "@connectrpc/connect-node";
import { Base64Stream } from "./grpc-frames.js";
import { grpcTimeoutMs } from "../platform/grpc/wire.js";

type Req = IncomingMessage | Http2ServerRequest;
type Res = ServerResponse | Http2ServerResponse;

export interface RpcHandlerOptions extends Omit<ConnectRouterOptions, "maxTimeoutMs"> {
  routes(router: ConnectRouter): void;
  fallback(req: Req, res: Res): void;
  contextValues?(req: Req): ContextValues;
  /** A unary call asking for a longer deadline gets this one instead. */
  maxUnaryTimeoutMs: number;
}

/**
 * connect-node's adapter (connectNodeAdapter), with what the gateway's callers need around it:
 * - an over-long unary deadline is clamped, as the services clamp it, instead of refused
 *   (a C-core client's timeout=60 arrives as grpc-timeout 60100m);
 * - a wrong HTTP method or content type gets a status and a sentence, and 405 says what is Allowed;
 * - application/grpc-web-text (base64 gRPC-web, what grpc-web clients send when asked to) is
 *   translated to and from gRPC-web;
 * - a request body that is not a valid message is invalid_argument, as at the services, where
 *   connect reports its own parse failure as internal.
 */
export function createRpcHandler(options: RpcHandlerOptions): (req: Req, res: Res) => void {
  const router = createConnectRouter({
    acceptCompression: [compressionGzip, compressionBrotli],
    ...options,
    // Left unset: connect-node would refuse what the gateway clamps (see clampTimeout).
    maxTimeoutMs: undefined,
  });
  options.routes(router);
  const paths = new Map<string, UniversalHandler>(router.handlers.map((h) => [h.requestPath, h]));

  return (req, res) => {
    const handler = paths.get((req.url ?? "").split("?", 1)[0] ?? "");
    if (!handler) return options.fallback(req, res);
    const method = req.method ?? "";
    const contentType = req.headers["content-type"] ?? "";
    // gRPC and gRPC-web are POST only, even for a method a Connect client may GET.
    const allowed = /^application\/grpc/i.test(contentType) ? ["POST"] : handler.allowedMethods;
    if (!allowed.includes(method)) {
      const name = `${handler.service.typeName}/${handler.method.name}`;
      const sentence = notAllowed(name, method, allowed, handler.allowedMethods.includes("GET"));
      return refuse(res, 405, "unimplemented", sentence, { Allow: allowed.join(", ") });
    }
    const text = isGrpcWebText(contentType);
    // connect-node picks the only protocol a GET can be when there is no content type.
    if (method !== "GET" && !text && !handler.supportedContentType(contentType)) {
      return refuse(res, 415, "invalid_argument", unsupported(contentType));
    }
    const uReq = universalRequestFromNodeRequest(req, res, undefined, options.contextValues?.(req));
    endsOnlyWhenSent(uReq, req, handler.method);
    clampTimeout(uReq.header, handler.method, options.maxUnaryTimeoutMs);
    if (text) fromGrpcWebText(uReq);
    handler(uReq)
      .then(async (uRes) => {
        let out = await invalidInputInstead(uRes, contentType, handler.method);
        if (text) out = toGrpcWebText(out);
        return universalResponseToNodeResponse(out, res);
      })
      .catch(() => {
        // The response is already under way or the client has gone: there is no one to tell.
        if (!res.headersSent) refuse(res, 500, "internal", "the gateway could not answer this call");
        else res.destroy();
      });
  };
}

/** An answer the gateway gives before any protocol applies: an HTTP status and Connect's error body. */
export function refuse(res: Res, status: number, code: string, message: string, headers: Record<string, string> = {}) {
  const body = JSON.stringify({ code, message }) + "\n";
  res.writeHead(status, { ...headers, "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

/** Why `method` is refused for the RPC `name`; `getAllowed`: Connect clients may GET it. */
export function notAllowed(name: string, method: string, allowed: string[], getAllowed: boolean): string {
  if (allowed.includes("GET")) return `${name} is called with POST (or GET, having no side effects), not ${method}`;
  if (getAllowed) return `${name} is called with POST over gRPC and gRPC-web, not ${method}`;
  return `${name} is called with POST, not ${method}; only methods without side effects answer GET`;
}

export function unsupported(contentType: string): string {
  return (
    `content type ${contentType ? `"${contentType}"` : "(none)"} is not one this gateway speaks: ` +
    "application/json or application/proto (Connect), application/connect+json or +proto (Connect streaming), " +
    "application/grpc, application/grpc-web or application/grpc-web-text"
  );
}

// ---- a client that gives up ----

/**
 * A streamed request body ends only if the client finished sending it; a client that gave up
 * makes it fail with `canceled`, which the forwarder turns into a cancellation of the upstream
 * call. Passed on as an end, it would be a half-close upstream: to documents, a complete upload
 * to commit, with the cancellation arriving a moment later, too late.
 *
 * Two ways an abandoned HTTP/2 stream reads as finished:
 * - node:http2's compatibility layer ends the request body of a stream that was reset or whose
 *   connection went, just as for END_STREAM, and says so only afterwards; the stream is marked
 *   aborted (with its reset code) before the body ends, so that is checked.
 * - Clients built on node:http2 (grpc-js, connect-node) cancel with close(), which ends their
 *   side of the stream before it resets it: END_STREAM, then RST_STREAM in the next write. The
 *   gateway would read the first, forward the half-close, and read the reset one turn later.
 *   So the end of a streamed request is held for two turns of the event loop (the second
 *   polls the socket again) and passed on only if no reset came right behind it. A unary
 *   request is complete in its message, and is not held.
 * node:http reports a dropped HTTP/1.1 connection as an error already; `complete` is checked
 * all the same.
 */
function endsOnlyWhenSent(uReq: UniversalServerRequest, req: Req, method: DescMethod) {
  const body = uReq.body;
  if (!(Symbol.asyncIterator in Object(body))) return;
  const streamed = method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming";
  uReq.body = (async function* () {
    try {
      yield* body as AsyncIterable<Uint8Array>;
    } catch (err) {
      // node's "aborted" or "Premature close": the client's doing, not a fault of the gateway.
      if (clientGaveUp(req)) throw new ConnectError("the client cancelled the call", Code.Canceled);
      throw err;
    }
    if (streamed && "stream" in req) {
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
    }
    if (clientGaveUp(req)) throw new ConnectError("the client cancelled the call", Code.Canceled);
  })();
}

/** A client that ended its request and reset the stream right behind it, or whose connection went. */
export function clientGaveUp(req: Req): boolean {
  if ("stream" in req) return req.stream.aborted || req.stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR;
  return !req.complete;
}

// ---- deadlines ----

/**
 * Rewrites a unary call's timeout header to the longest the mesh allows when it asks for more.
 * A value that does not parse is left for connect-node to refuse. Streams keep what they ask
 * for, as at the services: an upload or a watch may rightly run longer than any unary call.
 */
function clampTimeout(header: Headers, method: DescMethod, maxMs: number) {
  if (method.methodKind !== "unary") return;
  const grpc = grpcTimeoutMs(header.get("grpc-timeout") ?? "");
  if (grpc !== undefined && grpc > maxMs) header.set("grpc-timeout", `${maxMs}m`);
  const connect = /^\d{1,10}$/.exec(header.get("connect-timeout-ms") ?? "");
  if (connect && Number(connect[0]) > maxMs) header.set("connect-timeout-ms", String(maxMs));
}

// ---- gRPC-web text ----

function isGrpcWebText(contentType: string): boolean {
  return /^application\/grpc-web-text(\+proto)?(;|$)/i.test(contentType);
}

/** The request as gRPC-web: the body is base64, possibly several padded pieces in a row. */
function fromGrpcWebText(uReq: UniversalServerRequest) {
  uReq.header.set("content-type", "application/grpc-web+proto");
  uReq.header.delete("content-length");
  const source = uReq.body as AsyncIterable<Uint8Array>;
  uReq.body = (async function* () {
    const decoder = new Base64Stream();
    for await (const chunk of source) {
      const bytes = decoder.push(chunk);
      if (bytes.length > 0) yield bytes;
    }
    decoder.end();
  })();
}

/** The response as gRPC-web text: each piece of the body base64 on its own, as it is sent. */
function toGrpcWebText(uRes: UniversalServerResponse): UniversalServerResponse {
  const header = new Headers(uRes.header);
  if ((header.get("content-type") ?? "").startsWith("application/grpc-web")) {
    header.set("content-type", "application/grpc-web-text+proto");
  }
  header.delete("content-length");
  const body = uRes.body;
  return {
    ...uRes,
    header,
    body: body
      ? (async function* () {
          for await (const chunk of body) yield new Uint8Array(Buffer.from(Buffer.from(chunk).toString("base64")));
        })()
      : undefined,
  };
}

// ---- malformed messages ----

/**
 * connect reports a body it cannot parse as `internal` ("parse binary: premature EOF"), and a
 * compressed frame without an encoding as `internal` too. Both are the caller's mistake; the
 * services answer invalid_argument for them, and so does the gateway.
 */
function remap(code: Code, message: string, method: DescMethod): ConnectError | undefined {
  if (code !== Code.Internal) return undefined;
  if (message.startsWith("parse binary:")) {
    return new ConnectError(`the request is not a valid ${method.input.typeName} message`, Code.InvalidArgument);
  }
  if (message.startsWith("received compressed envelope")) {
    return new ConnectError("a message is flagged compressed but the request names no encoding", Code.InvalidArgument);
  }
  return undefined;
}

function invalidInputInstead(
  uRes: UniversalServerResponse,
  contentType: string,
  method: DescMethod,
): UniversalServerResponse | Promise<UniversalServerResponse> {
  const ct = contentType.toLowerCase();
  if (ct.startsWith("application/grpc-web")) return lastFrame(uRes, 0x80, method, grpcWebTrailer);
  if (ct.startsWith("application/grpc")) return grpcTrailer(uRes, method);
  if (ct.startsWith("application/connect+")) return lastFrame(uRes, 0x02, method, connectEndStream);
  return connectUnary(uRes, method);
}

const codeNames = Object.fromEntries(
  Object.entries(Code)
    .filter(([, v]) => typeof v === "number")
    .map(([k, v]) => [v, k.replace(/[A-Z]/g, (c, i) => (i ? "_" : "") + c.toLowerCase())]),
) as Record<number, string>;

function grpcTrailer(uRes: UniversalServerResponse, method: DescMethod): UniversalServerResponse {
  const fix = () => {
    const t = uRes.trailer;
    if (!t) return;
    const err = remap(Number(t.get("grpc-status")), decodeURIComponent(t.get("grpc-message") ?? ""), method);
    if (!err) return;
    t.set("grpc-status", String(err.code));
    t.set("grpc-message", encodeURIComponent(err.rawMessage));
  };
  const body = uRes.body;
  if (!body) {
    fix();
    return uRes;
  }
  return {
    ...uRes,
    body: (async function* () {
      yield* body;
      fix();
    })(),
  };
}

function grpcWebTrailer(data: Buffer, method: DescMethod): Buffer | undefined {
  const text = data.toString("latin1");
  const status = /^grpc-status:\s*(\d+)\s*$/im.exec(text);
  const message = /^grpc-message:\s*(.*?)\s*$/im.exec(text);
  const err = status && remap(Number(status[1]), decodeURIComponent(message?.[1] ?? ""), method);
  if (!err) return undefined;
  const kept = text.split("\r\n").filter((l) => l && !/^grpc-(status|message):/i.test(l));
  kept.push(`grpc-status: ${err.code}`, `grpc-message: ${encodeURIComponent(err.rawMessage)}`);
  return Buffer.from(kept.join("\r\n") + "\r\n", "latin1");
}

function connectEndStream(data: Buffer, method: DescMethod): Buffer | undefined {
  const end = JSON.parse(data.toString("utf8")) as { error?: { code?: string; message?: string } };
  const code = Object.entries(codeNames).find(([, n]) => n === end.error?.code)?.[0];
  const err = code !== undefined && remap(Number(code), end.error?.message ?? "", method);
  if (!err) return undefined;
  end.error = { code: codeNames[err.code], message: err.rawMessage };
  return Buffer.from(JSON.stringify(end));
}

/** Rewrites the body's last frame when it has `flag` (trailers, end of stream) and is not compressed. */
function lastFrame(
  uRes: UniversalServerResponse,
  flag: number,
  method: DescMethod,
  rewrite: (data: Buffer, method: DescMethod) => Buffer | undefined,
): UniversalServerResponse {
  const body = uRes.body;
  if (!body) return uRes;
  return {
    ...uRes,
    body: (async function* () {
      for await (const chunk of body) {
        const frame = Buffer.from(chunk);
        const flags = frame[0] ?? 0;
        const length = frame.length >= 5 ? frame.readUInt32BE(1) : -1;
        if ((flags & flag) === flag && (flags & 0x01) === 0 && length === frame.length - 5) {
          let fixed: Buffer | undefined;
          try {
            fixed = rewrite(frame.subarray(5), method);
          } catch {
            fixed = undefined;
          }
          if (fixed) {
            const prefix = Buffer.alloc(5);
            prefix[0] = flags;
            prefix.writeUInt32BE(fixed.length, 1);
            yield Buffer.concat([prefix, fixed]);
            continue;
          }
        }
        yield chunk;
      }
    })(),
  };
}

async function connectUnary(uRes: UniversalServerResponse, method: DescMethod): Promise<UniversalServerResponse> {
  if (uRes.status !== 500 || !uRes.body) return uRes;
  const chunks: Buffer[] = [];
  for await (const c of uRes.body) chunks.push(Buffer.from(c));
  const raw = Buffer.concat(chunks);
  let body = raw;
  let status = uRes.status;
  try {
    const e = JSON.parse(raw.toString("utf8")) as { code?: string; message?: string };
    const code = Object.entries(codeNames).find(([, n]) => n === e.code)?.[0];
    const err = code !== undefined ? remap(Number(code), e.message ?? "", method) : undefined;
    if (err) {
      body = Buffer.from(JSON.stringify({ code: codeNames[err.code], message: err.rawMessage }));
      status = 400;
    }
  } catch {
    // Not a Connect error body: pass it on untouched.
  }
  const header = new Headers(uRes.header);
  header.set("content-length", String(body.length));
  return {
    ...uRes,
    status,
    header,
    body: (async function* () {
      yield new Uint8Array(body);
    })(),
  };
}
