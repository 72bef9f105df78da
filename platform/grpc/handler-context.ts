import type { DescMethod, DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextKey,
  type ContextKey,
  type ContextValues,
  type HandlerContext,
} from "@connectrpc/connect";
import type { IncomingHttpHeaders } from "node:http2";
import type { CoarseTimers } from "./coarse-timer.js";
import { isTransportHeader } from "./metadata.js";

/** The connection's peer address, set by the server that accepted the connection. */
export const peerKey = createContextKey<string | undefined>(undefined, { description: "peer address" });

/**
 * The handler context of one call served by the adapter, built for the per-call path:
 * connect's createHandlerContext links three AbortControllers (deadline, request, shutdown),
 * copies the request headers and makes two response Headers on every call. Here one controller
 * carries every reason a call ends, the deadline is one timer, shutdown reaches the calls through
 * one listener per server (see `trackUntilShutdown`), and response headers exist only once
 * something touches them.
 */
export class CallContext implements HandlerContext {
  readonly protocolName = "grpc";
  readonly requestMethod = "POST";
  readonly timeoutMs: () => number | undefined;
  readonly service: DescService;
  private controller: AbortController | undefined;
  private timer: NodeJS.Timeout | undefined;
  private coarse: CoarseTimers | undefined;
  private coarseTimer: object | undefined;
  private header: Headers | undefined;
  private requestHeaders: Headers | undefined;
  private trailer: Headers | undefined;
  private over = false;
  /** Why the call was cut short; undefined while it runs or once it finished normally. */
  abortReason: unknown;
  /** Whether the call was cut short (deadline, cancellation, shutdown) rather than answered. */
  cutShort = false;
  /** Told why the call was cut short (deadline, cancellation, shutdown), once. */
  onAbort: ((reason: unknown) => void) | undefined;

  constructor(
    readonly method: DescMethod,
    readonly url: string,
    /** The request's HTTP/2 headers as node parsed them; binary (-bin) values stay base64, as on the wire. */
    private readonly headers: IncomingHttpHeaders,
    readonly values: ContextValues,
    timeoutMs: number | undefined,
    private readonly onEnd: (reason: unknown) => void,
  ) {
    this.service = method.parent;
    this.timeoutMs = timeoutMs === undefined ? () => undefined : remainingUntil(Date.now() + timeoutMs);
  }

  /**
   * Made on first use: creating an AbortSignal costs more than most of a small call, and most
   * handlers never look at theirs. One made after the call ended is born aborted.
   */
  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.over) this.controller.abort(this.cutShort ? this.abortReason : callFinished);
    }
    return this.controller.signal;
  }

  /**
   * Starts the deadline clock; apart from the constructor, so `onEnd` may refer to this context.
   * A deadline the caller chose is kept to the millisecond; the server's default for callers that
   * chose none may use a coarse timer, which spares a Node timer on every such call.
   */
  arm(timeoutMs: number | undefined, coarse?: CoarseTimers): void {
    if (timeoutMs === undefined) return;
    if (timeoutMs <= 0) this.abort(deadlineExceeded());
    else if (coarse) {
      this.coarse = coarse;
      this.coarseTimer = coarse.set(timeoutMs, () => this.abort(deadlineExceeded()));
    } else this.timer = setTimeout(() => this.abort(deadlineExceeded()), timeoutMs);
  }

  private stopClock(): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.coarse) this.coarse.clear(this.coarseTimer);
  }

  /** The request metadata as Fetch Headers, converted on first use (many calls never read them). */
  get requestHeader(): Headers {
    if (this.requestHeaders) return this.requestHeaders;
    const out = new Headers();
    for (const key in this.headers) {
      if (isTransportHeader(key)) continue;
      const v = this.headers[key];
      if (Array.isArray(v)) for (const one of v) out.append(key, one);
      else if (v !== undefined) out.append(key, v);
    }
    return (this.requestHeaders = out);
  }

  /** One request header, as Headers.get would return it, without converting all of them. */
  requestHeaderValue(name: string): string | null {
    if (this.requestHeaders) return this.requestHeaders.get(name);
    const key = name.toLowerCase();
    if (isTransportHeader(key)) return null;
    const v = this.headers[key];
    if (v === undefined) return null;
    return Array.isArray(v) ? v.join(", ") : v;
  }

  get responseHeader(): Headers {
    return (this.header ??= new Headers());
  }

  get responseTrailer(): Headers {
    return (this.trailer ??= new Headers());
  }

  /** The response headers if anything set one; undefined spares building metadata for none. */
  responseHeaderIfAny(): Headers | undefined {
    return this.header && hasAny(this.header) ? this.header : undefined;
  }

  responseTrailerIfAny(): Headers | undefined {
    return this.trailer && hasAny(this.trailer) ? this.trailer : undefined;
  }

  /** Ends the call early: the handler's signal fires and the answer is the reason. */
  abort(reason: unknown): void {
    if (this.over) return;
    this.over = true;
    this.cutShort = true;
    this.abortReason = reason;
    this.stopClock();
    this.controller?.abort(reason);
    this.onAbort?.(reason);
    this.onEnd(reason);
  }

  /** The client went away; a no-op for a call already over, so no error is built for those. */
  cancel(): void {
    if (!this.over) this.abort(new ConnectError("the client cancelled the call", Code.Canceled));
  }

  /** The call is answered: work a handler left behind that watches the signal is told to stop. */
  finish(): void {
    if (this.over) return;
    this.over = true;
    this.stopClock();
    this.controller?.abort(callFinished);
    this.onEnd(callFinished);
  }

  /** A plain copy, for connect's streaming invokers which spread the context into the handler's. */
  snapshot(): HandlerContext {
    return {
      service: this.service,
      method: this.method,
      protocolName: this.protocolName,
      requestMethod: this.requestMethod,
      url: this.url,
      signal: this.signal,
      timeoutMs: this.timeoutMs,
      requestHeader: this.requestHeader,
      responseHeader: this.responseHeader,
      responseTrailer: this.responseTrailer,
      values: this.values,
    };
  }
}

function remainingUntil(at: number): () => number {
  return () => at - Date.now();
}

function hasAny(h: Headers): boolean {
  let any = false;
  h.forEach(() => (any = true));
  return any;
}

/** One shared reason: building an Error per call would capture a stack trace on the hot path. */
export const callFinished = new ConnectError("the call has finished", Code.Canceled);

function deadlineExceeded(): ConnectError {
  return new ConnectError("the operation timed out", Code.DeadlineExceeded);
}

/**
 * Calls in flight, per shutdown signal: one listener per server aborts them all when it starts
 * draining, instead of a listener added and removed by every call.
 */
const inFlight = new WeakMap<AbortSignal, Set<CallContext>>();

export function trackUntilShutdown(signal: AbortSignal): { add(c: CallContext): void; remove(c: CallContext): void } {
  let calls = inFlight.get(signal);
  if (!calls) {
    const set = new Set<CallContext>();
    calls = set;
    inFlight.set(signal, set);
    signal.addEventListener("abort", () => {
      for (const c of [...set]) c.abort(signal.reason);
    });
  }
  const set = calls;
  return {
    add: (c) => {
      if (signal.aborted) c.abort(signal.reason);
      else set.add(c);
    },
    remove: (c) => void set.delete(c),
  };
}

/**
 * The context values of a call, with the peer address worked out only when asked for: most calls
 * never look at it (only rate limiting of anonymous callers does). A class, so a call allocates
 * one object rather than three closures.
 */
export class CallValues<S = unknown> implements ContextValues {
  private readonly values: Record<symbol, unknown> = {};
  /** `peer(source)` is the caller's address; a shared function and its argument, not a closure per call. */
  constructor(
    private readonly source: S,
    private readonly peer: (source: S) => string,
  ) {}

  get<T>(key: ContextKey<T>): T {
    if (key.id in this.values) return this.values[key.id] as T;
    if (key === (peerKey as ContextKey<unknown>)) return (this.values[key.id] = this.peer(this.source)) as T;
    return key.defaultValue;
  }

  set<T>(key: ContextKey<T>, value: T): this {
    this.values[key.id] = value;
    return this;
  }

  delete(key: ContextKey<unknown>): this {
    delete this.values[key.id];
    return this;
  }
}

/**
 * The request the interceptors see for a unary or server-streaming call, reading the call's
 * context; its signal too is made only when read. A server stream's `message` is an iterable of
 * its one request, as connect's interceptors expect of a stream.
 */
export class CallRequest {
  readonly stream: boolean;
  readonly requestMethod = "POST";
  readonly method: DescMethod;
  readonly service: DescService;
  readonly url: string;
  readonly contextValues: ContextValues;
  constructor(
    readonly ctx: CallContext,
    readonly message: unknown,
  ) {
    this.stream = ctx.method.methodKind !== "unary";
    this.method = ctx.method;
    this.service = ctx.service;
    this.url = ctx.url;
    this.contextValues = ctx.values;
  }
  get header(): Headers {
    return this.ctx.requestHeader;
  }
  get signal(): AbortSignal {
    return this.ctx.signal;
  }
}

/** One request header of any request; for a call of the adapter, without converting its metadata. */
export function requestHeaderValue(req: { header: Headers }, name: string): string | null {
  return req instanceof CallRequest ? req.ctx.requestHeaderValue(name) : req.header.get(name);
}

/** Whether a request's call has already been cut short, without making its signal to find out. */
export function alreadyCutShort(req: { signal: AbortSignal }): boolean {
  return req instanceof CallRequest ? req.ctx.cutShort : req.signal.aborted;
}
