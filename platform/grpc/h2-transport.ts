import http2, {
  constants as h2,
  type Http2Server,
  type Http2Session,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
  type ServerHttp2Stream,
} from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import { encodeGrpcMessage, FrameReader, frameOf, grpcTimeoutMs, tooLarge } from "./wire.js";

/**
 * The mesh's gRPC server transport, straight on node:http2: it reads a call's headers and frames
 * and writes its answer, and leaves everything above the wire (decoding, interceptors, deadlines
 * as handlers see them) to adapter.ts. grpc-js is still the mesh's client; see the README's
 * decisions for why its server is not used.
 *
 * What it decides on its own, before any handler runs:
 * - content-type must be application/grpc or application/grpc+<codec> (HTTP 415 otherwise;
 *   gRPC-web is the gateway's job);
 * - the path must name a served method (unimplemented), and the request must be a POST;
 * - grpc-timeout must be 1-8 digits and a unit (invalid_argument otherwise); a deadline longer
 *   than a Node timer can hold is held as the longest one it can;
 * - a frame announcing more than the message limit is resource_exhausted from its prefix;
 *   a frame flagged compressed is inflated (gzip, deflate) or refused (wire.ts FrameReader).
 */

/** What a served method needs from the transport: its kind and the function that runs a call. */
export interface MethodRoute {
  /** Unary and server-streaming methods take exactly one request message. */
  singleRequest: boolean;
  serve(call: ServerCall): void;
}

export interface H2TransportOptions {
  maxMessageBytes: number;
  /** Ping a connection this long after it last showed signs of life, and drop it if no answer comes in `keepaliveTimeoutMs`. */
  keepaliveMs: number;
  keepaliveTimeoutMs: number;
  /** A connection with no call in flight this long is closed with GOAWAY. */
  maxConnectionIdleMs: number;
}

/** Node's timers hold at most 2^31 - 1 ms (24.8 days); a longer deadline is held as that. */
const LONGEST_TIMER_MS = 2 ** 31 - 1;

/** Response headers of a call that answers with messages; one shared object, node copies it. */
const OK_HEADERS: OutgoingHttpHeaders = Object.freeze({
  [h2.HTTP2_HEADER_STATUS]: 200,
  [h2.HTTP2_HEADER_CONTENT_TYPE]: "application/grpc+proto",
  "grpc-accept-encoding": "identity,deflate,gzip",
});
const OK_TRAILERS: OutgoingHttpHeaders = Object.freeze({ "grpc-status": "0" });
const RESPOND_WITH_TRAILERS = Object.freeze({ waitForTrailers: true });
const RESPOND_AND_END = Object.freeze({ endStream: true });

/** A status as HTTP/2 trailers (or a trailers-only response), with a readable sentence. */
export function statusHeaders(code: Code, message: string): OutgoingHttpHeaders {
  return { "grpc-status": String(code), "grpc-message": encodeGrpcMessage(message) };
}

/**
 * One call on one HTTP/2 stream. The adapter reads the request through it and answers through
 * it; it keeps the stream's bookkeeping (whether headers went out, whether the client left).
 */
export class ServerCall {
  /** The client reset the stream or lost its connection before the call was answered. */
  cancelled = false;
  /** The answer (status) has been handed to the stream. */
  done = false;
  /** Told once when the client goes away before the answer. */
  onCancel: (() => void) | undefined;
  private headersSent = false;
  private reader: FrameReader | undefined;
  private single:
    | {
        done: (message: Buffer | undefined, err?: ConnectError) => void;
        message: Buffer | undefined;
        count: number;
        failed: boolean;
      }
    | undefined;
  /** @internal The trailers to send when node asks for them. */
  trailers: OutgoingHttpHeaders = OK_TRAILERS;

  constructor(
    readonly stream: ServerHttp2Stream,
    readonly headers: IncomingHttpHeaders,
    /** The client's grpc-timeout in ms; undefined when it sent none. */
    readonly timeoutMs: number | undefined,
    readonly route: MethodRoute,
    private readonly maxBytes: number,
  ) {}

  /** The client's IP address, as the socket reports it. */
  peer(): string {
    return this.stream.session?.socket?.remoteAddress ?? "";
  }

  private frames(): FrameReader {
    const enc = this.headers["grpc-encoding"];
    return (this.reader ??= new FrameReader(this.maxBytes, typeof enc === "string" ? enc.toLowerCase() : undefined));
  }

  /**
   * Reads the one request message of a unary or server-streaming call; `done` gets it, or the
   * reason the request is refused. Not called back if the call ends first.
   */
  readSingle(done: (message: Buffer | undefined, err?: ConnectError) => void): void {
    this.single = { done, message: undefined, count: 0, failed: false };
    // Shared listeners that find the call on the stream: no closures per call.
    this.stream.on("data", onSingleData);
    this.stream.on("end", onSingleEnd);
  }

  /** @internal */
  singleData(chunk: Buffer): void {
    const single = this.single;
    if (!single || single.failed) return;
    let got: Buffer[];
    try {
      got = this.frames().push(chunk);
    } catch (err) {
      return this.singleFailed(err as ConnectError);
    }
    single.count += got.length;
    if (single.count > 1)
      return this.singleFailed(
        new ConnectError("a unary request carries exactly one message; more arrived", Code.Unimplemented),
      );
    if (got.length === 1) single.message = got[0];
  }

  /** @internal */
  singleEnd(): void {
    const single = this.single;
    if (!single || single.failed || this.done) return;
    // A stream may stay open for hours after its request: keep neither the request's bytes,
    // nor the frame reader, nor the callback (and what it holds) past this point.
    this.single = undefined;
    this.stream.removeListener("data", onSingleData);
    this.stream.removeListener("end", onSingleEnd);
    const reader = this.frames();
    this.reader = undefined;
    try {
      reader.end();
    } catch (err) {
      return single.done(undefined, err as ConnectError);
    }
    if (single.message === undefined)
      return single.done(undefined, new ConnectError("the request ended without a message", Code.Unimplemented));
    single.done(single.message);
  }

  private singleFailed(err: ConnectError): void {
    this.single!.failed = true;
    this.stream.removeListener("data", onSingleData);
    this.discardRest();
    this.single!.done(undefined, err);
  }

  /** The request messages of a client- or bidi-streaming call, as they arrive (backpressured). */
  async *messages(): AsyncGenerator<Buffer> {
    const reader = this.frames();
    try {
      // Node destroys a stream once its async iterator completes; that would also end the
      // writable half before the status is sent.
      for await (const chunk of this.stream.iterator({ destroyOnReturn: false })) {
        for (const m of reader.push(chunk as Buffer)) yield m;
      }
    } catch (err) {
      if (err instanceof ConnectError) {
        this.discardRest();
        throw err;
      }
      throw new ConnectError("the client cancelled the call", Code.Canceled);
    }
    // Clients that cancel may send END_STREAM just before RST_STREAM (grpc-js does): an upload
    // that ended that way must not be mistaken for a complete one.
    await new Promise((r) => setImmediate(r));
    if (this.cancelled || this.stream.rstCode) throw new ConnectError("the client cancelled the call", Code.Canceled);
    reader.end();
  }

  /** Reads and drops whatever the client still sends after the call is answered or refused. */
  private discardRest(): void {
    if (!this.stream.readableEnded) this.stream.resume();
  }

  /** Sends the response headers now (with `extra` metadata), if they have not gone out yet. */
  sendHeaders(extra?: OutgoingHttpHeaders): void {
    if (this.headersSent || this.done || this.stream.closed) return;
    this.headersSent = true;
    const stream = this.stream;
    stream.respond(extra ? { ...OK_HEADERS, ...extra } : OK_HEADERS, RESPOND_WITH_TRAILERS);
    stream.on("wantTrailers", sendCallTrailers);
  }

  /** Writes one response message; false means wait for "drain". Throws past the message limit. */
  write(message: Uint8Array): boolean {
    if (message.byteLength > this.maxBytes) throw tooLarge("response", message.byteLength, this.maxBytes);
    if (!this.headersSent) this.sendHeaders();
    if (this.stream.closed || this.stream.destroyed) return true;
    return this.stream.write(frameOf(message));
  }

  /** Ends the call with `status` (grpc-status 0 unless it says otherwise) after everything written. */
  finish(trailers: OutgoingHttpHeaders = OK_TRAILERS): void {
    if (this.done) return;
    this.done = true;
    const stream = this.stream;
    if (stream.closed || stream.destroyed) return;
    this.discardRest();
    if (!this.headersSent) {
      // Trailers-only: the status travels in the one HEADERS frame.
      this.headersSent = true;
      stream.respond(
        { [h2.HTTP2_HEADER_STATUS]: 200, [h2.HTTP2_HEADER_CONTENT_TYPE]: "application/grpc+proto", ...trailers },
        RESPOND_AND_END,
      );
      return;
    }
    this.trailers = trailers;
    stream.end();
  }

  /** Answers with one message and a status in one go: the unary path. */
  answer(message: Uint8Array, header?: OutgoingHttpHeaders, trailers: OutgoingHttpHeaders = OK_TRAILERS): void {
    if (this.done) return;
    if (message.byteLength > this.maxBytes)
      return this.finish(statusFrom(tooLarge("response", message.byteLength, this.maxBytes)));
    const stream = this.stream;
    this.done = true;
    if (stream.closed || stream.destroyed) return;
    this.trailers = trailers;
    this.discardRest();
    if (!this.headersSent) {
      this.headersSent = true;
      stream.respond(header ? { ...OK_HEADERS, ...header } : OK_HEADERS, RESPOND_WITH_TRAILERS);
      stream.on("wantTrailers", sendCallTrailers);
    }
    stream.end(frameOf(message));
  }

  /** Resets the stream (the client sees CANCEL), for a status stuck behind bytes it does not read. */
  reset(): void {
    if (!this.stream.closed && !this.stream.destroyed) this.stream.close(h2.NGHTTP2_CANCEL);
  }
}

/** The call served on a stream, for the shared stream listeners. */
const kCall = Symbol("medmesh call");
/** The connection bookkeeping of a stream's session. */
const kSession = Symbol("medmesh session state");
type TrackedStream = ServerHttp2Stream & { [kCall]?: ServerCall; [kSession]?: SessionState };

function onSingleData(this: TrackedStream, chunk: Buffer): void {
  this[kCall]?.singleData(chunk);
}

function onSingleEnd(this: TrackedStream): void {
  this[kCall]?.singleEnd();
}

function sendCallTrailers(this: TrackedStream): void {
  this.sendTrailers(this[kCall]?.trailers ?? OK_TRAILERS);
}

/** When a stream closes: one call fewer on its connection, and a cancellation if its call was still running. */
function onStreamClose(this: TrackedStream): void {
  const state = this[kSession];
  if (state && --state.active === 0) state.idleSince = Date.now();
  const call = this[kCall];
  if (call && !call.done) {
    call.cancelled = true;
    call.onCancel?.();
  }
}

function statusFrom(err: ConnectError): OutgoingHttpHeaders {
  return statusHeaders(err.code, err.rawMessage);
}

/** Per connection: calls in flight and when it last did anything, for idleness and keepalive. */
interface SessionState {
  active: number;
  idleSince: number;
  /** When the last ping went out unanswered, 0 when none is outstanding. */
  pingSentAt: number;
  lastSeen: number;
}

const noop = () => {};

/**
 * The HTTP/2 server under startGrpcServer: routes streams to methods and keeps connections
 * healthy (keepalive pings, idle bound, graceful close).
 */
export class H2Transport {
  readonly server: Http2Server;
  private readonly sessions = new Map<Http2Session, SessionState>();
  private sweeping: NodeJS.Timeout | undefined;
  private closing = false;

  constructor(
    private readonly routes: ReadonlyMap<string, MethodRoute>,
    private readonly opts: H2TransportOptions,
  ) {
    this.server = http2.createServer({
      // As grpc-js configured node: the session's memory is bounded by the message limits and
      // flow control, not by node's default 10 MB, which large uploads in flight would exceed.
      maxSessionMemory: Number.MAX_SAFE_INTEGER,
    });
    this.server.on("session", (s) => this.adopt(s));
    this.server.on("stream", (stream, headers) => this.onStream(stream, headers));
    this.server.on("sessionError", noop);
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, host, () => {
        this.server.removeListener("error", reject);
        resolve((this.server.address() as { port: number }).port);
      });
    });
  }

  private adopt(session: Http2Session): void {
    const now = Date.now();
    const state: SessionState = { active: 0, idleSince: now, pingSentAt: 0, lastSeen: now };
    this.sessions.set(session, state);
    session.on("error", noop);
    session.once("close", () => this.sessions.delete(session));
    this.sweeping ??= this.startSweeping();
    if (this.closing) session.close();
  }

  /**
   * One timer per server looks after every connection: GOAWAY after the idle bound, a ping when
   * one has been quiet for the keepalive time, and the end of one that does not answer it.
   * (Per-connection timers would be reset on every call.)
   */
  private startSweeping(): NodeJS.Timeout {
    const { maxConnectionIdleMs, keepaliveMs, keepaliveTimeoutMs } = this.opts;
    const every = Math.max(50, Math.min(1000, Math.floor(Math.min(maxConnectionIdleMs, keepaliveTimeoutMs) / 4)));
    const t = setInterval(() => {
      const now = Date.now();
      for (const [session, s] of this.sessions) {
        if (session.destroyed) {
          this.sessions.delete(session);
          continue;
        }
        if (s.active === 0 && now - s.idleSince >= maxConnectionIdleMs && !session.closed) {
          session.close();
          continue;
        }
        if (s.pingSentAt > 0) {
          if (now - s.pingSentAt >= keepaliveTimeoutMs) session.destroy();
        } else if (now - s.lastSeen >= keepaliveMs) {
          s.pingSentAt = now;
          try {
            session.ping((err) => {
              if (err) return;
              s.pingSentAt = 0;
              s.lastSeen = Date.now();
            });
          } catch {
            session.destroy();
          }
        }
      }
    }, every);
    t.unref();
    return t;
  }

  private onStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    stream.on("error", noop);
    const state = this.sessions.get(stream.session!);
    if (state) {
      state.active++;
      state.lastSeen = Date.now();
    }
    const contentType = headers[h2.HTTP2_HEADER_CONTENT_TYPE];
    if (!isGrpcContentType(contentType)) {
      this.track(stream, state, undefined);
      stream.respond({ [h2.HTTP2_HEADER_STATUS]: 415, [h2.HTTP2_HEADER_CONTENT_TYPE]: "text/plain" }, RESPOND_AND_END);
      return;
    }
    const path = headers[h2.HTTP2_HEADER_PATH] as string;
    const route = this.routes.get(path);
    let refused: ConnectError | undefined;
    let timeoutMs: number | undefined;
    if (!route) refused = new ConnectError(`the method ${path} is not served here`, Code.Unimplemented);
    else if (headers[h2.HTTP2_HEADER_METHOD] !== "POST")
      refused = new ConnectError("gRPC calls are POST requests", Code.Unimplemented);
    else {
      const raw = headers["grpc-timeout"];
      if (raw !== undefined) {
        timeoutMs = grpcTimeoutMs(String(raw));
        if (timeoutMs === undefined)
          refused = new ConnectError(
            `grpc-timeout "${String(raw).slice(0, 40)}" is not a timeout: up to 8 digits and a unit (H, M, S, m, u, n)`,
            Code.InvalidArgument,
          );
        else timeoutMs = Math.min(timeoutMs, LONGEST_TIMER_MS);
      }
    }
    if (refused) {
      this.track(stream, state, undefined);
      if (!stream.readableEnded) stream.resume();
      stream.respond(
        {
          [h2.HTTP2_HEADER_STATUS]: 200,
          [h2.HTTP2_HEADER_CONTENT_TYPE]: "application/grpc+proto",
          ...statusFrom(refused),
        },
        RESPOND_AND_END,
      );
      return;
    }
    const call = new ServerCall(stream, headers, timeoutMs, route!, this.opts.maxMessageBytes);
    this.track(stream, state, call);
    route!.serve(call);
  }

  /** Notes the stream's call and connection for its close. */
  private track(stream: TrackedStream, state: SessionState | undefined, call: ServerCall | undefined): void {
    stream[kSession] = state;
    stream[kCall] = call;
    stream.on("close", onStreamClose);
  }

  /** Calls still in flight on any connection. */
  get inFlight(): number {
    let n = 0;
    for (const s of this.sessions.values()) n += s.active;
    return n;
  }

  /**
   * Stops accepting connections and sends every connection GOAWAY: calls in flight finish, new
   * ones go elsewhere. Resolves once every connection has closed, or after `graceMs` with the
   * rest destroyed (their calls see a cancellation).
   */
  async close(graceMs: number, onForce: () => void): Promise<void> {
    this.closing = true;
    this.server.close();
    for (const session of this.sessions.keys()) if (!session.closed) session.close();
    const deadline = Date.now() + graceMs;
    while (this.sessions.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
      for (const session of [...this.sessions.keys()]) if (session.destroyed) this.sessions.delete(session);
    }
    if (this.sessions.size > 0) {
      onForce();
      for (const session of this.sessions.keys()) session.destroy();
      this.sessions.clear();
    }
    clearInterval(this.sweeping);
  }
}

/** application/grpc, or application/grpc+<codec> / ;params; not application/grpc-web. */
function isGrpcContentType(ct: string | string[] | undefined): boolean {
  if (typeof ct !== "string" || !ct.startsWith("application/grpc")) return false;
  const next = ct.charCodeAt(16);
  return ct.length === 16 || next === 0x2b /* + */ || next === 0x3b; /* ; */
}
