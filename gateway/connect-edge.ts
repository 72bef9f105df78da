import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import http2, { type ClientHttp2Stream, type Http2ServerRequest, type Http2ServerResponse } from "node:http2";
import { fromBinary, fromJson, toBinary, toJson, type DescMessage, type Message } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createContextValues, type Interceptor } from "@connectrpc/connect";
import { context, propagation, SpanKind, SpanStatusCode, trace, type Span } from "@opentelemetry/api";
import { policyKey, principalKey, type Principal } from "../platform/grpc/interceptors/access.js";
import { clientAddressKey } from "../platform/grpc/interceptors/client-address.js";
import { peerKey } from "../platform/grpc/handler-context.js";
import { rateLimitInterceptor } from "../platform/grpc/interceptors/rate-limit.js";
import { admit, takeRateToken } from "./admission.js";
import { clientAddressOf } from "./client-address.js";
import {
  connectTimeoutMs,
  connectTypeOf,
  detailsFromGrpc,
  detailsOfError,
  endStream,
  envelope,
  EnvelopeReader,
  errorJson,
  httpStatusOf,
  responseContentType,
  type ConnectType,
  type DetailJson,
} from "./connect-wire.js";
import { forwardableHeaderRecord, returnableHeaderRecord } from "./edge-headers.js";
import { plainSentence } from "./edge-status.js";
import {
  DEADLINE_GRACE_MS,
  edgeSpan,
  httpStatusCode,
  lostUpstream,
  openUpstream,
  recordCall,
  upstreamHeaders,
  upstreamStatus,
  type PassthroughOptions,
} from "./passthrough.js";
import type { PassRoute } from "./passthrough-routes.js";
import { notAllowed, refuse, unsupported } from "./rpc-handler.js";

/**
 * The Connect protocol served by the gateway itself: unary calls (POST with JSON or binary, and
 * GET for methods without side effects) and server streams (application/connect+json, +proto).
 * A JSON request is decoded with the method's descriptor and re-encoded as the binary message;
 * a binary one is checked and sent as it came. Either way it goes to the service as a gRPC call
 * over the pooled connection, with everything the pass-through owes a call (passthrough.ts):
 * access policy and rate class, the client's signed address, the header rules, the deadline,
 * byte limits, cancellation both ways, a span, a log line and the metrics. The answer comes back
 * as Connect writes it: the message (as JSON when asked), or the error body with the HTTP status
 * of its code; unary trailers as trailer- headers, a stream's in its end-of-stream message.
 * Credential calls are decoded here anyway, so their rate limit reads the account they name.
 *
 * Declined (the handler returns false, and connect-node serves the call): compressed requests
 * (Content-Encoding, Connect-Content-Encoding, a GET's compression parameter), client and bidi
 * streams, and anything that is not Connect.
 */

type Req = IncomingMessage | Http2ServerRequest;
type Res = ServerResponse | Http2ServerResponse;

/** gRPC's OK, which connect's Code leaves out. */
const OK = 0 as Code;
const { NGHTTP2_CANCEL, NGHTTP2_NO_ERROR } = http2.constants;

const nodeHeaderGetter = {
  keys: (h: IncomingHttpHeaders) => Object.keys(h),
  get: (h: IncomingHttpHeaders, key: string) => h[key],
};

export interface ConnectEdge {
  /** True when it took the call, false for calls connect-node serves. */
  handle(req: Req, res: Res): boolean;
}

/** Rejects when a credential call's caller or the account it names is over its bucket. */
type MessageRateCheck = (
  route: PassRoute,
  message: Message,
  principal: Principal | undefined,
  address: string | undefined,
  peer: string | undefined,
) => Promise<unknown>;

export function createConnectEdge(opts: PassthroughOptions): ConnectEdge {
  const active = new Set<ConnectCall>();
  opts.shutdown.addEventListener(
    "abort",
    () => {
      for (const call of active) call.fail(Code.Unavailable, "the gateway is shutting down; try again shortly");
    },
    { once: true },
  );
  // The rate-limit interceptor itself decides credential calls, so there is one rule for them.
  const limit = rateLimitInterceptor(
    opts.rateLimit.limiter,
    opts.rateLimit.rules,
  )((() => Promise.resolve()) as unknown as Parameters<Interceptor>[0]);
  const checkMessage: MessageRateCheck = (route, message, principal, address, peer) =>
    limit({
      stream: false,
      method: route.desc,
      service: route.desc.parent,
      message,
      contextValues: createContextValues()
        .set(policyKey, route.policy)
        .set(principalKey, principal)
        .set(clientAddressKey, address)
        .set(peerKey, peer),
    } as unknown as Parameters<ReturnType<Interceptor>>[0]);

  return {
    handle(req, res) {
      const url = req.url ?? "";
      const q = url.indexOf("?");
      const route = opts.routes.get(q < 0 ? url : url.slice(0, q));
      if (!route) return false;
      const kind = route.desc.methodKind;
      if (kind !== "unary" && kind !== "server_streaming") return false;
      const contentType = req.headers["content-type"] ?? "";
      if (/^application\/grpc/i.test(contentType)) return false;
      const getAllowed = kind === "unary" && route.desc.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS;
      const method = req.method ?? "";
      let type: ConnectType | undefined;
      let query: URLSearchParams | undefined;
      if (method === "GET" && getAllowed) {
        query = new URLSearchParams(q < 0 ? "" : url.slice(q + 1));
        const compression = query.get("compression");
        if (compression !== null && compression !== "identity") return false;
        const encoding = query.get("encoding");
        type =
          encoding === "json" || encoding === "proto" ? { binary: encoding === "proto", stream: false } : undefined;
        if (!type) {
          refuse(
            res,
            415,
            "invalid_argument",
            `a GET names its message's encoding: encoding=json or encoding=proto, not ${encoding === null ? "none" : `"${encoding}"`}`,
          );
          return true;
        }
      } else if (method !== "POST") {
        const allowed = getAllowed ? ["POST", "GET"] : ["POST"];
        refuse(res, 405, "unimplemented", notAllowed(route.rpc, method, allowed, getAllowed), {
          Allow: allowed.join(", "),
        });
        return true;
      } else {
        type = connectTypeOf(contentType);
        if (!type || type.stream !== (kind === "server_streaming")) {
          refuse(res, 415, "invalid_argument", unsupported(contentType));
          return true;
        }
        const encoding = req.headers[type.stream ? "connect-content-encoding" : "content-encoding"];
        if (encoding !== undefined && encoding !== "identity") return false;
      }
      const call = new ConnectCall(route, type, req, res, query, opts, active, checkMessage);
      active.add(call);
      call.start();
      return true;
    },
  };
}

class ConnectCall {
  private done = false;
  private readonly started = performance.now();
  private span: Span | undefined;
  /** The hop to the service, under the gateway's server span, as a client span. */
  private clientSpan: Span | undefined;
  private upstream: ClientHttp2Stream | undefined;
  private upstreamTrailers: IncomingHttpHeaders | undefined;
  private upstreamError: Error | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** The service's response headers worth returning, once they came. */
  private responseHeaders: OutgoingHttpHeaders = {};
  /** A unary call's answer, binary, until the trailers say it stands. */
  private answer: Buffer | undefined;
  private responseReader: EnvelopeReader | undefined;
  private responseBlocked = false;

  constructor(
    private readonly route: PassRoute,
    private readonly type: ConnectType,
    private readonly req: Req,
    private readonly res: Res,
    private readonly query: URLSearchParams | undefined,
    private readonly opts: PassthroughOptions,
    private readonly active: Set<ConnectCall>,
    private readonly checkMessage: MessageRateCheck,
  ) {}

  start(): void {
    const { route, opts, req } = this;
    req.on("error", () => {});
    this.res.on("close", () => {
      if (!this.done) this.clientLeft();
    });
    const headers = req.headers;
    const parent = headers.traceparent
      ? propagation.extract(context.active(), headers, nodeHeaderGetter)
      : context.active();
    this.span = edgeSpan(route.rpc, SpanKind.SERVER, route.spanAttributes, parent);

    let timeoutMs = connectTimeoutMs(headers["connect-timeout-ms"]);
    if (Number.isNaN(timeoutMs)) {
      return this.fail(
        Code.InvalidArgument,
        `connect-timeout-ms "${String(headers["connect-timeout-ms"])}" is not a timeout (up to 10 digits, in milliseconds)`,
      );
    }
    // As at the services: an over-long unary deadline is clamped, not refused; streams keep theirs.
    if (route.unary) timeoutMs = timeoutMs === undefined ? opts.defaultUnaryMs : Math.min(timeoutMs, opts.maxUnaryMs);
    if (timeoutMs !== undefined && timeoutMs < 1) {
      return this.fail(Code.DeadlineExceeded, "the deadline expired before the call started");
    }
    const deadlineAt = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    if (timeoutMs !== undefined) {
      this.timer = setTimeout(
        () => this.fail(Code.DeadlineExceeded, plainSentence[Code.DeadlineExceeded]!),
        timeoutMs + DEADLINE_GRACE_MS,
      );
    }

    if (this.query) {
      let bytes: Buffer;
      try {
        const message = this.query.get("message") ?? "";
        bytes = this.query.get("base64") === "1" ? base64UrlBytes(message) : Buffer.from(message, "utf8");
      } catch (err) {
        return this.failWith(err);
      }
      return this.admitWith(bytes, deadlineAt);
    }
    // A streaming request is one envelope: the message and its 5-byte prefix.
    const max = opts.maxMessageBytes + (this.type.stream ? 5 : 0);
    const declared = Number(headers["content-length"]);
    if (declared > max) return this.tooLarge(declared - (this.type.stream ? 5 : 0));
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      if (this.done) return;
      size += chunk.length;
      if (size > max) return this.tooLarge(undefined);
      chunks.push(chunk);
    });
    req.on("end", () => {
      if (this.done) return;
      this.admitWith(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks), deadlineAt);
    });
  }

  private tooLarge(bytes: number | undefined): void {
    const max = this.opts.maxMessageBytes;
    this.fail(
      Code.ResourceExhausted,
      bytes === undefined
        ? `the request message is larger than the ${max} bytes the gateway accepts`
        : `a request message of ${bytes} bytes is larger than the ${max} bytes the gateway accepts`,
    );
  }

  /** Decodes the request, admits the caller, draws its rate tokens and forwards the call. */
  private admitWith(body: Buffer, deadlineAt: number | undefined): void {
    const { route, opts } = this;
    const headers = this.req.headers;
    let decoded: { binary: Uint8Array; message: Message | undefined };
    const out: OutgoingHttpHeaders = {};
    let admitted;
    try {
      decoded = this.decode(this.type.stream ? onlyMessage(body) : body);
      forwardableHeaderRecord(headers, out);
      admitted = admit(route.policy, route.service, route.method, headers, opts.resolvePrincipal);
    } catch (err) {
      return this.failWith(err);
    }
    const peer = this.req.socket?.remoteAddress;
    const address = clientAddressOf(peer, headers["x-forwarded-for"], opts.trustedProxies);
    const go = () => this.forward(out, decoded.binary, deadlineAt, address);
    const stop = (err: unknown) => this.failWith(err);
    const limit = (principal: Principal | undefined) => {
      if (this.done) return;
      const taken = route.readsMessage
        ? this.checkMessage(route, decoded.message!, principal, address, peer)
        : takeRateToken(opts.rateLimit.limiter, opts.rateLimit.rules, route.rateClass, principal, address ?? peer);
      if (taken) taken.then(go, stop);
      else go();
    };
    if (admitted instanceof Promise) admitted.then(limit, stop);
    else limit(admitted);
  }

  /** The request message as binary for the service, and decoded when something here reads it. */
  private decode(bytes: Buffer): { binary: Uint8Array; message: Message | undefined } {
    const schema = this.route.desc.input;
    if (this.type.binary) {
      let message: Message;
      try {
        message = fromBinary(schema, bytes);
      } catch {
        throw new ConnectError(`the request is not a valid ${schema.typeName} message`, Code.InvalidArgument);
      }
      return { binary: bytes, message: this.route.readsMessage ? message : undefined };
    }
    let json: unknown;
    try {
      json = JSON.parse(bytes.toString("utf8"));
    } catch (err) {
      throw new ConnectError(
        `the request is not valid JSON (${(err as Error).message}); a ${schema.typeName} message was expected`,
        Code.InvalidArgument,
      );
    }
    let message: Message;
    try {
      // A misspelt field or enum name from a script is an error to report, not data to drop.
      message = fromJson(schema as DescMessage, json as never, { ignoreUnknownFields: false });
    } catch (err) {
      throw new ConnectError((err as Error).message, Code.InvalidArgument);
    }
    return { binary: toBinary(schema, message), message };
  }

  private forward(
    out: OutgoingHttpHeaders,
    message: Uint8Array,
    deadlineAt: number | undefined,
    address: string | undefined,
  ): void {
    if (this.done) return;
    // Connect's own headers describe this hop; the frames to the service are never compressed.
    for (const key of Object.keys(out)) if (key.startsWith("connect-")) delete out[key];
    delete out["grpc-encoding"];
    delete out["grpc-accept-encoding"];
    const { route } = this;
    this.clientSpan = edgeSpan(
      route.rpc,
      SpanKind.CLIENT,
      route.clientSpanAttributes,
      trace.setSpan(context.active(), this.span!),
    );
    upstreamHeaders(route, this.clientSpan, deadlineAt, address, this.opts.edgeSecrets, out);
    const up = openUpstream(this.opts.pool, route.target, out);
    if (!up) return this.fail(Code.Unavailable, this.unavailable());
    this.upstream = up;
    up.on("response", (h) => this.onResponse(h));
    up.on("data", (chunk: Buffer) => this.onResponseData(chunk));
    up.on("trailers", (t) => (this.upstreamTrailers = t));
    up.on("error", (err) => (this.upstreamError = err));
    up.on("close", () => this.onUpstreamClose());
    up.end(envelope(0, message));
  }

  private onResponse(h: IncomingHttpHeaders): void {
    if (this.done) return;
    const status = Number(h[":status"]);
    if (status !== 200) {
      const code = httpStatusCode(status);
      return this.fail(code, plainSentence[code] ?? `the service answered HTTP ${status}`);
    }
    if (h["grpc-status"] !== undefined) {
      // Trailers-only: the call's status came with the headers.
      this.upstreamTrailers = h;
      return;
    }
    returnableHeaderRecord(h, this.responseHeaders);
    delete this.responseHeaders["grpc-encoding"];
    delete this.responseHeaders["grpc-accept-encoding"];
    // A stream's headers go now, so a watch that stays quiet is seen to have started.
    if (this.type.stream) this.sendHeaders(200, {});
  }

  private sendHeaders(status: number, extra: OutgoingHttpHeaders): void {
    this.res.writeHead(status, {
      ...this.responseHeaders,
      ...extra,
      "content-type": responseContentType(this.type),
    });
  }

  private onResponseData(chunk: Buffer): void {
    if (this.done) return;
    const reader = (this.responseReader ??= new EnvelopeReader(this.opts.maxMessageBytes));
    let over: number;
    try {
      over = reader.push(chunk, (flags, payload) => this.onResponseMessage(flags, payload));
    } catch (err) {
      return this.failWith(err);
    }
    if (over >= 0) {
      return this.fail(
        Code.ResourceExhausted,
        `a response message of ${over} bytes is larger than the ${this.opts.maxMessageBytes} bytes the gateway passes on`,
      );
    }
  }

  private onResponseMessage(flags: number, payload: Buffer): void {
    if (this.done) return;
    // The gateway asks for no compression, so a compressed frame is the service's fault.
    if (flags & 0x01)
      throw new ConnectError("the service answered with a message it compressed unasked", Code.Internal);
    if (!this.type.stream) {
      if (this.answer) throw new ConnectError("the service answered a unary call with two messages", Code.Internal);
      this.answer = payload;
      return;
    }
    const res = this.res as ServerResponse;
    if (!res.headersSent) this.sendHeaders(200, {});
    const ok = res.write(envelope(0, this.type.binary ? payload : this.jsonOf(payload)));
    if (!ok && !this.responseBlocked) {
      const up = this.upstream!;
      this.responseBlocked = true;
      up.pause();
      res.once("drain", () => {
        this.responseBlocked = false;
        up.resume();
      });
    }
  }

  /** A binary response message as Connect JSON. */
  private jsonOf(payload: Uint8Array): Buffer {
    const schema = this.route.desc.output;
    try {
      return Buffer.from(JSON.stringify(toJson(schema, fromBinary(schema, payload))));
    } catch (err) {
      throw new ConnectError(
        `the service's answer is not a ${schema.typeName} that JSON can show: ${(err as Error).message}`,
        Code.Internal,
      );
    }
  }

  private onUpstreamClose(): void {
    if (this.done) return;
    const t = this.upstreamTrailers;
    if (!t) {
      const [code, message] = lostUpstream(this.upstream!, this.upstreamError);
      return this.fail(code, code === Code.Unavailable ? this.unavailable() : message);
    }
    const { code, message, trailers } = upstreamStatus(t);
    const details = code === OK ? [] : detailsFromGrpc(t["grpc-status-details-bin"]);
    delete trailers["grpc-status"];
    delete trailers["grpc-message"];
    delete trailers["grpc-status-details-bin"];
    if (code !== OK || this.type.stream) return this.finish(code, message, details, trailers, undefined);
    if (!this.answer) return this.fail(Code.Internal, "the service answered a unary call without a message");
    let body: Uint8Array;
    try {
      body = this.type.binary ? this.answer : this.jsonOf(this.answer);
    } catch (err) {
      return this.failWith(err);
    }
    this.finish(OK, "", [], trailers, body);
  }

  /** As the mesh's clients say it, naming the service (not where it runs). */
  private unavailable(): string {
    return `${this.route.desc.parent.name} is unavailable right now; try again shortly`;
  }

  failWith(err: unknown): void {
    const ce = ConnectError.from(err);
    this.finish(ce.code, ce.rawMessage, detailsOfError(ce), {}, undefined);
  }

  fail(code: Code, message: string): void {
    this.finish(code, message, [], {}, undefined);
  }

  /** The client went away: the service's call is cancelled and there is no one to answer. */
  private clientLeft(): void {
    this.finish(Code.Canceled, "the client cancelled the call", [], undefined, undefined);
  }

  /** `trailers` undefined: no answer is written (the client is gone). `body`: a unary success. */
  private finish(
    code: Code,
    message: string,
    details: DetailJson[],
    trailers: Record<string, string> | undefined,
    body: Uint8Array | undefined,
  ): void {
    if (this.done) return;
    this.done = true;
    this.active.delete(this);
    clearTimeout(this.timer);
    const up = this.upstream;
    if (up && !up.closed && !up.destroyed) up.close(code === OK ? NGHTTP2_NO_ERROR : NGHTTP2_CANCEL);
    const res = this.res;
    if (trailers && !res.destroyed && !res.writableEnded) {
      const error = code === OK ? undefined : errorJson(code, message, details);
      if (this.type.stream) {
        if (!res.headersSent) this.sendHeaders(200, {});
        res.end(endStream(error, trailers));
      } else if (!res.headersSent) {
        const payload = body ?? Buffer.from(JSON.stringify(error));
        const extra: OutgoingHttpHeaders = { "content-length": payload.length };
        for (const key in trailers) extra[`trailer-${key}`] = trailers[key];
        if (error) {
          // An error is JSON whatever the request's encoding.
          res.writeHead(httpStatusOf(code), { ...this.responseHeaders, ...extra, "content-type": "application/json" });
        } else {
          this.sendHeaders(200, extra);
        }
        res.end(payload);
      }
    }
    // A request still arriving after the answer is read and dropped, so the client can finish.
    if (!this.req.readableEnded) this.req.resume();
    const client = this.clientSpan;
    if (client) {
      client.setAttribute("rpc.grpc.status_code", code);
      if (code !== OK) client.setStatus({ code: SpanStatusCode.ERROR, message });
      client.end();
    }
    recordCall(this.route, this.started, this.span, code, message);
  }
}

/** The one message of a server-streaming request: exactly one envelope, not compressed. */
function onlyMessage(body: Buffer): Buffer {
  if (body.length < 5 || body.readUInt32BE(1) > body.length - 5) {
    throw new ConnectError(
      "the request ends inside a message: its envelope announces more bytes than were sent",
      Code.InvalidArgument,
    );
  }
  if (body.readUInt32BE(1) < body.length - 5) {
    throw new ConnectError("a server-streaming call takes exactly one request message", Code.InvalidArgument);
  }
  if (body[0]! & 0x01) {
    throw new ConnectError("a message is flagged compressed but the request names no encoding", Code.InvalidArgument);
  }
  return body.subarray(5);
}

/** A GET's base64 message parameter: URL-safe or standard alphabet, padded or not. */
function base64UrlBytes(text: string): Buffer {
  if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(text) || text.replace(/=+$/, "").length % 4 === 1) {
    throw new ConnectError("the message parameter is not base64, as base64=1 says it is", Code.InvalidArgument);
  }
  return Buffer.from(text, "base64");
}
