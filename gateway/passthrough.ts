import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import http2, {
  type ClientHttp2Stream,
  type Http2ServerRequest,
  type Http2Session,
  type Http2ServerResponse,
  type ServerHttp2Stream,
} from "node:http2";
import type { Readable } from "node:stream";
import { Code, ConnectError } from "@connectrpc/connect";
import { setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import {
  context,
  propagation,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Span,
} from "@opentelemetry/api";
import { CLIENT_ADDRESS_HEADER, vouchForAddress, type EdgeSecrets } from "../platform/auth/client-address.js";
import type { RateLimiter } from "../platform/cache/rate-limiter.js";
import type { Principal, PrincipalResolver } from "../platform/grpc/interceptors/access.js";
import type { RateRules } from "../platform/grpc/interceptors/rate-limit.js";
import { logger } from "../platform/telemetry/logger.js";
import { rpcSeries, type RpcSeries } from "../platform/telemetry/metrics.js";
import { childIds } from "../platform/telemetry/span-ids.js";
import { tracingMode } from "../platform/telemetry/tracing-mode.js";
import { admit, takeRateToken } from "./admission.js";
import { clientAddressOf, type TrustedProxies } from "./client-address.js";
import { forwardableHeaderRecord, returnableHeaderRecord } from "./edge-headers.js";
import { edgeMessage, plainSentence } from "./edge-status.js";
import { clientGaveUp } from "./rpc-handler.js";
import { Base64Stream, FrameWatcher, grpcWebTrailerFrame } from "./grpc-frames.js";
import { decodeGrpcMessage, encodeGrpcMessage, grpcTimeoutMs } from "../platform/grpc/wire.js";
import type { PassRoute } from "./passthrough-routes.js";
import type { UpstreamPool } from "./upstream-pool.js";

/**
 * gRPC and gRPC-web calls forwarded frame by frame: the length-prefixed messages go to the
 * service as they came, over one pooled HTTP/2 connection per upstream, and its frames come back
 * the same way. Nothing is decoded. What the edge owes every call is decided from the method's
 * descriptor (passthrough-routes.ts) and the headers: the access policy and rate class, the
 * client's signed address, which headers travel each way, the deadline, the size of each frame,
 * cancellation both ways, a server span, a log line and the call metrics.
 * Connect requests and credential calls are not handled here (the handler returns false).
 */

type Req = IncomingMessage | Http2ServerRequest;
type Res = ServerResponse | Http2ServerResponse;

export interface PassthroughOptions {
  routes: Map<string, PassRoute>;
  pool: UpstreamPool;
  resolvePrincipal: PrincipalResolver;
  rateLimit: { limiter: RateLimiter; rules: RateRules };
  trustedProxies: TrustedProxies;
  edgeSecrets: EdgeSecrets | undefined;
  maxMessageBytes: number;
  defaultUnaryMs: number;
  maxUnaryMs: number;
  shutdown: AbortSignal;
}

type Protocol = "grpc" | "web" | "text";

function protocolOf(contentType: string): Protocol | undefined {
  if (/^application\/grpc(\+proto)?(;|$)/i.test(contentType)) return "grpc";
  if (/^application\/grpc-web(\+proto)?(;|$)/i.test(contentType)) return "web";
  if (/^application\/grpc-web-text(\+proto)?(;|$)/i.test(contentType)) return "text";
  return undefined;
}

const log = logger.child({ component: "gateway" });
const tracer = trace.getTracer("medmesh-rpc");
const nodeHeaderGetter = {
  keys: (h: IncomingHttpHeaders) => Object.keys(h),
  get: (h: IncomingHttpHeaders, key: string) => h[key],
};

/** After the deadline, how long the service has to send its own answer before the gateway gives it. */
export const DEADLINE_GRACE_MS = 100;

/** The call's timeout in ms: undefined for none, NaN for a value that does not parse. */
function timeoutOf(
  header: string | string[] | undefined,
  route: PassRoute,
  opts: PassthroughOptions,
): number | undefined {
  if (header === undefined) return route.unary ? opts.defaultUnaryMs : undefined;
  const ms = grpcTimeoutMs(String(header));
  if (ms === undefined) return NaN;
  // As at the services: an over-long unary deadline is clamped, not refused; streams keep theirs.
  return route.unary && ms > opts.maxUnaryMs ? opts.maxUnaryMs : ms;
}

function ignore(): void {}

// A session's socket is reached through node's proxy object: asked once per connection, not per call.
const peers = new WeakMap<Http2Session, string | undefined>();
function peerOf(session: Http2Session | undefined): string | undefined {
  if (!session) return undefined;
  if (peers.has(session)) return peers.get(session);
  const peer = session.socket?.remoteAddress;
  // A socket already gone has no address; that is not worth remembering.
  if (peer !== undefined) peers.set(session, peer);
  return peer;
}

/** gRPC's OK, which connect's Code leaves out. */
const OK = 0 as Code;

const { NGHTTP2_CANCEL, NGHTTP2_ENHANCE_YOUR_CALM, NGHTTP2_INADEQUATE_SECURITY, NGHTTP2_NO_ERROR } = http2.constants;

/** The request side of a call, whichever objects node handed over. */
interface Incoming {
  headers: IncomingHttpHeaders;
  /** The request body: the request object, or the HTTP/2 stream itself. */
  body: Readable;
  peer: string | undefined;
  /** Over HTTP/2: the end of a streamed request may be followed by a reset (see pumpRequest). */
  overHttp2: boolean;
  /** A client that ended its request and reset the stream right behind it (see rpc-handler.ts). */
  gaveUp(): boolean;
}

function incomingOf(req: Req): Incoming {
  return {
    headers: req.headers,
    body: req,
    peer: req.socket?.remoteAddress,
    overHttp2: "stream" in req,
    gaveUp: () => clientGaveUp(req),
  };
}

export interface Passthrough {
  /** True when it took the call, false for calls the decoding path serves. */
  handle(req: Req, res: Res): boolean;
  /**
   * The same for an HTTP/2 stream before node makes a request/response pair of it, which costs
   * more than forwarding a small call: plain gRPC without an Origin (no CORS to answer) is taken.
   */
  takeStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): boolean;
}

export function createPassthrough(opts: PassthroughOptions): Passthrough {
  const active = new Set<PassedCall>();
  opts.shutdown.addEventListener(
    "abort",
    () => {
      for (const call of active) call.fail(Code.Unavailable, "the gateway is shutting down; try again shortly");
    },
    { once: true },
  );
  const routeOf = (url: string) => {
    const q = url.indexOf("?");
    const route = opts.routes.get(q < 0 ? url : url.slice(0, q));
    return route?.readsMessage ? undefined : route;
  };
  return {
    handle(req, res) {
      const route = routeOf(req.url ?? "");
      if (!route || req.method !== "POST") return false;
      const protocol = protocolOf(req.headers["content-type"] ?? "");
      // gRPC needs HTTP/2 trailers; over HTTP/1.1 the decoding path answers it as it always has.
      if (!protocol || (protocol === "grpc" && !("stream" in req))) return false;
      const sink =
        protocol === "grpc"
          ? grpcSink(
              (res as Http2ServerResponse).stream,
              req.headers.origin === undefined ? {} : res.getHeaders(),
              res as Http2ServerResponse,
            )
          : webSink(res, protocol === "text");
      const call = new PassedCall(route, protocol, incomingOf(req), res, sink, opts, active);
      active.add(call);
      call.start();
      return true;
    },
    takeStream(stream, headers) {
      // An Expect header is left to node, which answers it before the handler runs.
      if (headers[":method"] !== "POST" || headers.origin !== undefined || headers.expect !== undefined) return false;
      const route = routeOf((headers[":path"] as string | undefined) ?? "");
      if (!route || protocolOf(headers["content-type"] ?? "") !== "grpc") return false;
      const incoming: Incoming = {
        headers,
        body: stream,
        peer: peerOf(stream.session),
        overHttp2: true,
        gaveUp: () => stream.aborted || stream.rstCode !== NGHTTP2_NO_ERROR,
      };
      const call = new PassedCall(route, "grpc", incoming, stream, grpcSink(stream, {}, undefined), opts, active);
      active.add(call);
      call.start();
      return true;
    },
  };
}

/** Where the answer goes: an HTTP/2 stream with trailers, or a gRPC-web body ending in a trailer frame. */
interface Sink {
  readonly headersSent: boolean;
  sendHeaders(headers: OutgoingHttpHeaders): void;
  write(chunk: Buffer): boolean;
  onceDrained(f: () => void): void;
  end(trailers: Record<string, string>): void;
}

/**
 * `cors`: the headers the gateway set on the response object before handing the call over. `res`:
 * that object, when there is one; it answers the stream's wantTrailers itself.
 */
function grpcSink(stream: ServerHttp2Stream, cors: OutgoingHttpHeaders, res: Http2ServerResponse | undefined): Sink {
  let contentType = "application/grpc+proto";
  return {
    get headersSent() {
      return stream.headersSent;
    },
    sendHeaders(headers) {
      if (typeof headers["content-type"] === "string") contentType = headers["content-type"];
      stream.respond({ ...cors, ...headers, ":status": 200, "content-type": contentType }, { waitForTrailers: true });
    },
    write: (chunk) => stream.write(chunk),
    onceDrained: (f) => stream.once("drain", f),
    end(trailers) {
      if (stream.destroyed || stream.closed) return;
      if (!stream.headersSent) {
        // Trailers-only: the status in the one header block, as gRPC answers a call it refuses.
        stream.respond({ ...cors, ":status": 200, "content-type": contentType, ...trailers }, { endStream: true });
        return;
      }
      if (res) {
        // node's compatibility response answers the stream's wantTrailers with the trailers it holds.
        res.addTrailers(trailers);
      } else {
        stream.once("wantTrailers", () => {
          if (!stream.destroyed && !stream.closed) stream.sendTrailers(trailers);
        });
      }
      stream.end();
    },
  };
}

function webSink(res: Res, text: boolean): Sink {
  const contentType = text ? "application/grpc-web-text+proto" : "application/grpc-web+proto";
  const encode = (b: Buffer) => (text ? Buffer.from(b.toString("base64"), "latin1") : b);
  const sink: Sink = {
    get headersSent() {
      return res.headersSent;
    },
    sendHeaders(headers) {
      delete headers["content-length"];
      res.writeHead(200, { ...headers, "content-type": contentType });
    },
    write: (chunk) => (res as ServerResponse).write(encode(chunk)),
    onceDrained: (f) => res.once("drain", f),
    end(trailers) {
      if (res.destroyed || res.writableEnded) return;
      if (!res.headersSent) sink.sendHeaders({});
      (res as ServerResponse).end(encode(grpcWebTrailerFrame(trailers)));
    },
  };
  return sink;
}

class PassedCall {
  private done = false;
  private readonly started = performance.now();
  private span: Span | undefined;
  private upstream: ClientHttp2Stream | undefined;
  private upstreamTrailers: IncomingHttpHeaders | undefined;
  private upstreamError: Error | undefined;
  private timer: NodeJS.Timeout | undefined;
  private requestBlocked = false;
  private responseBlocked = false;

  constructor(
    private readonly route: PassRoute,
    private readonly protocol: Protocol,
    private readonly incoming: Incoming,
    /** Emits 'close' when the client is gone or the answer has been sent. */
    private readonly closes: Res | ServerHttp2Stream,
    private readonly sink: Sink,
    private readonly opts: PassthroughOptions,
    private readonly active: Set<PassedCall>,
  ) {}

  start(): void {
    const { route, opts } = this;
    const req = this.incoming.body;
    // Nothing is read until the call is admitted and its upstream stream is open.
    req.pause();
    // A reset or a dropped connection must not throw; for a taken stream no request object listens.
    req.on("error", ignore);
    this.closes.on("close", () => {
      if (!this.done) this.clientLeft();
    });
    const headers = this.incoming.headers;
    const parent = headers.traceparent
      ? propagation.extract(context.active(), headers, nodeHeaderGetter)
      : context.active();
    this.span = edgeSpan(route.rpc, SpanKind.SERVER, route.spanAttributes, parent);

    const timeoutMs = timeoutOf(headers["grpc-timeout"], route, opts);
    if (Number.isNaN(timeoutMs)) {
      return this.fail(
        Code.InvalidArgument,
        `grpc-timeout "${String(headers["grpc-timeout"])}" is not a gRPC timeout (up to 8 digits and a unit: H, M, S, m, u or n)`,
      );
    }
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

    const out: OutgoingHttpHeaders = {};
    const peer = this.incoming.peer;
    const address = clientAddressOf(peer, headers["x-forwarded-for"], opts.trustedProxies);
    let admitted;
    try {
      forwardableHeaderRecord(headers, out);
      admitted = admit(route.policy, route.service, route.method, headers, opts.resolvePrincipal);
    } catch (err) {
      return this.failWith(err);
    }
    const limit = (principal: Principal | undefined) => {
      const taken = takeRateToken(
        opts.rateLimit.limiter,
        opts.rateLimit.rules,
        route.rateClass,
        principal,
        address ?? peer,
      );
      if (taken)
        taken.then(
          () => this.forward(out, deadlineAt, address),
          (err: unknown) => this.failWith(err),
        );
      else this.forward(out, deadlineAt, address);
    };
    if (admitted instanceof Promise) admitted.then(limit, (err: unknown) => this.failWith(err));
    else limit(admitted);
  }

  private forward(out: OutgoingHttpHeaders, deadlineAt: number | undefined, address: string | undefined): void {
    if (this.done) return;
    upstreamHeaders(this.route, this.span!, deadlineAt, address, this.opts.edgeSecrets, out);
    const up = openUpstream(this.opts.pool, this.route.target, out);
    if (!up) return this.fail(Code.Unavailable, plainSentence[Code.Unavailable]!);
    this.upstream = up;
    up.on("response", (h) => this.onResponse(h));
    up.on("data", (chunk: Buffer) => this.onResponseData(chunk));
    up.on("trailers", (t) => (this.upstreamTrailers = t));
    // The service's answer is complete once its side ends with a status, even while the client is
    // still sending (a stream the service refused part-way): the stream only closes when both sides
    // have, and a client that never half-closes would otherwise wait for its deadline.
    up.on("end", () => {
      if (this.upstreamTrailers) this.finishWithTrailers(this.upstreamTrailers);
    });
    up.on("error", (err) => (this.upstreamError = err));
    up.on("close", () => this.onUpstreamClose());
    this.pumpRequest(up);
  }

  private pumpRequest(up: ClientHttp2Stream): void {
    const { route, opts } = this;
    const req = this.incoming.body;
    const watcher = new FrameWatcher(opts.maxMessageBytes);
    const base64 = this.protocol === "text" ? new Base64Stream() : undefined;
    const encoding = this.incoming.headers["grpc-encoding"];
    const mayCompress = encoding !== undefined && encoding !== "identity";
    req.on("data", (chunk: Buffer) => {
      if (this.done) return;
      let bytes = chunk;
      if (base64) {
        try {
          bytes = base64.push(chunk);
        } catch (err) {
          return this.failWith(err);
        }
        if (bytes.length === 0) return;
      }
      const over = watcher.oversized(bytes);
      if (over >= 0) {
        return this.fail(
          Code.ResourceExhausted,
          `a request message of ${over} bytes is larger than the ${opts.maxMessageBytes} bytes the gateway accepts`,
        );
      }
      // grpc-js would call this unimplemented; it is the caller's mistake, as at the services.
      if (watcher.compressed && !mayCompress) {
        return this.fail(Code.InvalidArgument, "a message is flagged compressed but the request names no encoding");
      }
      if (!up.write(bytes) && !this.requestBlocked) {
        this.requestBlocked = true;
        req.pause();
        up.once("drain", () => {
          this.requestBlocked = false;
          req.resume();
        });
      }
    });
    req.on("end", () => {
      if (this.done) return;
      try {
        base64?.end();
      } catch (err) {
        return this.failWith(err);
      }
      // Passed on, a cut-off message would reach the service as no message, or as none at all.
      if (!watcher.atBoundary) {
        return this.fail(
          Code.InvalidArgument,
          "the request ends inside a message: its length prefix announces more bytes than were sent",
        );
      }
      if (!route.streamedRequest || !this.incoming.overHttp2) return void up.end();
      // An HTTP/2 client that cancels with close() sends END_STREAM and then RST_STREAM; passed on
      // at once, the end would be a complete upload to the service. Two turns of the event loop
      // (the second polls the socket again) show whether a reset came right behind it.
      setImmediate(() =>
        setImmediate(() => {
          if (this.done) return;
          if (this.incoming.gaveUp()) this.clientLeft();
          else up.end();
        }),
      );
    });
    req.resume();
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
    const out: OutgoingHttpHeaders = {};
    returnableHeaderRecord(h, out);
    if (typeof h["content-type"] === "string" && this.protocol === "grpc") out["content-type"] = h["content-type"];
    this.sink.sendHeaders(out);
  }

  private responseWatcher: FrameWatcher | undefined;

  private onResponseData(chunk: Buffer): void {
    if (this.done) return;
    const watcher = (this.responseWatcher ??= new FrameWatcher(this.opts.maxMessageBytes));
    const over = watcher.oversized(chunk);
    if (over >= 0) {
      return this.fail(
        Code.ResourceExhausted,
        `a response message of ${over} bytes is larger than the ${this.opts.maxMessageBytes} bytes the gateway passes on`,
      );
    }
    if (!this.sink.write(chunk) && !this.responseBlocked) {
      const up = this.upstream!;
      this.responseBlocked = true;
      up.pause();
      this.sink.onceDrained(() => {
        this.responseBlocked = false;
        up.resume();
      });
    }
  }

  private onUpstreamClose(): void {
    if (this.done) return;
    const t = this.upstreamTrailers;
    if (t) return this.finishWithTrailers(t);
    const [code, message] = lostUpstream(this.upstream!, this.upstreamError);
    this.fail(code, message);
  }

  private finishWithTrailers(t: IncomingHttpHeaders): void {
    const { code, message, trailers } = upstreamStatus(t);
    this.finish(code, message, trailers);
  }

  failWith(err: unknown): void {
    const ce = ConnectError.from(err);
    const headers = new Headers();
    setTrailerStatus(headers, ce);
    const trailers: Record<string, string> = {
      "grpc-status": String(ce.code),
      "grpc-message": encodeGrpcMessage(ce.rawMessage),
    };
    const details = headers.get("grpc-status-details-bin");
    if (details) trailers["grpc-status-details-bin"] = details;
    this.finish(ce.code, ce.rawMessage, trailers);
  }

  fail(code: Code, message: string): void {
    this.finish(code, message, { "grpc-status": String(code), "grpc-message": encodeGrpcMessage(message) });
  }

  /** The client reset the stream or dropped the connection: the service's call is cancelled. */
  private clientLeft(): void {
    this.finish(Code.Canceled, "the client cancelled the call", undefined);
  }

  private finish(code: Code, message: string, trailers: Record<string, string> | undefined): void {
    if (this.done) return;
    this.done = true;
    this.active.delete(this);
    clearTimeout(this.timer);
    const up = this.upstream;
    if (up && !up.closed && !up.destroyed) {
      up.close(code === OK ? NGHTTP2_NO_ERROR : NGHTTP2_CANCEL);
    }
    if (trailers) this.sink.end(trailers);
    // A request still arriving after the answer is read and dropped, so the client can finish.
    if (!this.incoming.body.readableEnded) this.incoming.body.resume();
    this.record(code, message);
  }

  private record(code: Code, message: string): void {
    recordCall(this.route, this.started, this.span, code, message);
  }
}

// ---- the pieces every call forwarded over the pool shares, whatever the caller spoke ----

/**
 * A span of the gateway's: a recorded one only when spans are exported. With an SDK that exports
 * nowhere ("ids", tracing-mode.ts) only the ids matter (the traceparent sent upstream), and the
 * SDK's span object, attribute copies and timings would be per-call work nothing reads.
 */
export function edgeSpan(name: string, kind: SpanKind, attributes: Attributes, parent: Context): Span {
  if (tracingMode() === "ids") return trace.wrapSpanContext(childIds(parent));
  return tracer.startSpan(name, { kind, attributes }, parent);
}

/**
 * Completes `out` (the forwardable request headers) as the gRPC request to the service: method,
 * path, content type, what is left of the deadline, the gateway span as the parent, and the
 * client's address signed for the services.
 */
export function upstreamHeaders(
  route: PassRoute,
  span: Span,
  deadlineAt: number | undefined,
  address: string | undefined,
  edgeSecrets: EdgeSecrets | undefined,
  out: OutgoingHttpHeaders,
): void {
  out[":method"] = "POST";
  out[":path"] = route.path;
  out["content-type"] = "application/grpc";
  out.te = "trailers";
  if (deadlineAt !== undefined) out["grpc-timeout"] = `${Math.max(1, Math.ceil(deadlineAt - Date.now()))}m`;
  const sc = span.spanContext();
  if (sc.traceId !== "00000000000000000000000000000000") {
    out.traceparent = `00-${sc.traceId}-${sc.spanId}-0${sc.traceFlags & 1}`;
    const state = sc.traceState?.serialize();
    if (state) out.tracestate = state;
  }
  if (edgeSecrets && address) {
    out[CLIENT_ADDRESS_HEADER] = vouchForAddress(edgeSecrets, address, route.path, Date.now());
  }
}

/** A stream to the service on the pooled connection, or undefined when none can be opened. */
export function openUpstream(
  pool: UpstreamPool,
  target: string,
  headers: OutgoingHttpHeaders,
): ClientHttp2Stream | undefined {
  try {
    return pool.session(target).request(headers);
  } catch {
    // A connection that is going away refuses new streams at once; the next one is fresh.
    try {
      return pool.session(target).request(headers);
    } catch {
      return undefined;
    }
  }
}

/** The status of an upstream stream that closed without trailers. */
export function lostUpstream(up: ClientHttp2Stream, error: Error | undefined): [Code, string] {
  const sessionAlive = !up.session?.destroyed && !up.session?.closed && error === undefined;
  if (sessionAlive && up.rstCode === NGHTTP2_ENHANCE_YOUR_CALM) {
    return [Code.ResourceExhausted, "the service is taking too many calls; try again shortly"];
  }
  if (sessionAlive && up.rstCode === NGHTTP2_INADEQUATE_SECURITY) {
    return [Code.PermissionDenied, "the service refused the connection"];
  }
  // Refused, reset (a connection that drops resets its streams with CANCEL), unreachable or
  // gone mid-call: the caller may try again.
  return [Code.Unavailable, plainSentence[Code.Unavailable]!];
}

/**
 * The call's status from the service's trailers, as a caller may read it (edgeMessage), and the
 * trailers to pass back in gRPC form: the service's own, with the status and its details.
 */
export function upstreamStatus(t: IncomingHttpHeaders): {
  code: Code;
  message: string;
  trailers: Record<string, string>;
} {
  const status = Number(t["grpc-status"]);
  const code = Number.isInteger(status) && status >= 0 && status <= 16 ? status : Code.Unknown;
  const trailers: Record<string, string> = {};
  returnableHeaderRecord(t, trailers as OutgoingHttpHeaders);
  delete trailers["grpc-encoding"];
  delete trailers["grpc-accept-encoding"];
  trailers["grpc-status"] = String(code);
  let message = "";
  if (code !== 0) {
    const raw = typeof t["grpc-message"] === "string" ? t["grpc-message"] : "";
    const said = decodeGrpcMessage(raw);
    message = edgeMessage(code, said);
    // The service's own words travel as it encoded them; only a replaced message is re-encoded.
    if (message) trailers["grpc-message"] = message === said ? raw : encodeGrpcMessage(message);
    const details = t["grpc-status-details-bin"];
    if (typeof details === "string") trailers["grpc-status-details-bin"] = details;
  }
  return { code, message, trailers };
}

/** Ends the call's span, and writes its metrics and its log line. */
export function recordCall(
  route: PassRoute,
  started: number,
  span: Span | undefined,
  code: Code,
  message: string,
): void {
  if (span) {
    span.setAttribute("rpc.grpc.status_code", code);
    if (code !== OK) span.setStatus({ code: SpanStatusCode.ERROR, message });
    span.end();
  }
  const durationMs = Math.round((performance.now() - started) * 100) / 100;
  const name = code === OK ? "ok" : (Code[code] ?? "unknown");
  seriesOf(route).record(name, durationMs);
  const fields = { rpc: route.rpc, code: name, duration_ms: durationMs };
  if (code === OK) log.debug("rpc finished", fields);
  else if (code === Code.Internal) log.error("rpc failed", { ...fields, error: message });
  else log.info("rpc rejected", { ...fields, error: message });
}

// A route's metric series, found once rather than by its label string on every call.
const series = new WeakMap<PassRoute, RpcSeries>();
function seriesOf(route: PassRoute): RpcSeries {
  let s = series.get(route);
  if (!s) series.set(route, (s = rpcSeries("gateway", route.rpc)));
  return s;
}

/** gRPC's mapping of an HTTP status that is not 200 (a proxy or something else answered). */
export function httpStatusCode(status: number): Code {
  switch (status) {
    case 400:
      return Code.Internal;
    case 401:
      return Code.Unauthenticated;
    case 403:
      return Code.PermissionDenied;
    case 404:
      return Code.Unimplemented;
    case 429:
    case 502:
    case 503:
    case 504:
      return Code.Unavailable;
    default:
      return Code.Unknown;
  }
}
