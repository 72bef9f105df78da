import { getEventListeners } from "node:events";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, type ContextKey, type ContextValues, type HandlerContext } from "@connectrpc/connect";
import { peerKey } from "./interceptors/rate-limit.js";

/**
 * The handler context of one call served by the grpc-js adapter, built for the per-call path:
 * connect's createHandlerContext links three AbortControllers (deadline, request, shutdown),
 * copies the request headers and makes two response Headers on every call. Here one controller
 * carries every reason a call ends, the deadline is one timer, shutdown reaches the calls through
 * one listener per server (see `trackUntilShutdown`), and response headers exist only once
 * something touches them.
 */
export class CallContext implements HandlerContext {
  readonly protocolName = "grpc";
  readonly requestMethod = "POST";
  readonly signal: AbortSignal;
  readonly timeoutMs: () => number | undefined;
  readonly service: DescService;
  private readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private header: Headers | undefined;
  private trailer: Headers | undefined;
  private over = false;
  /** Told why the call was cut short (deadline, cancellation, shutdown), once. */
  onAbort: ((reason: unknown) => void) | undefined;

  constructor(
    readonly method: DescMethod,
    readonly url: string,
    readonly requestHeader: Headers,
    readonly values: ContextValues,
    timeoutMs: number | undefined,
    private readonly cutShort: (reason: unknown) => void,
  ) {
    this.service = method.parent;
    this.signal = this.controller.signal;
    this.timeoutMs = timeoutMs === undefined ? () => undefined : remainingUntil(Date.now() + timeoutMs);
  }

  /** Starts the deadline clock; apart from the constructor, so `cutShort` may refer to this context. */
  arm(timeoutMs: number | undefined): void {
    if (timeoutMs === undefined) return;
    if (timeoutMs <= 0) this.abort(deadlineExceeded());
    else this.timer = setTimeout(() => this.abort(deadlineExceeded()), timeoutMs);
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
    clearTimeout(this.timer);
    this.controller.abort(reason);
    this.onAbort?.(reason);
    this.cutShort(reason);
  }

  /** The client went away; a no-op for a call already over, so no error is built for those. */
  cancel(): void {
    if (!this.over) this.abort(new ConnectError("the client cancelled the call", Code.Canceled));
  }

  /**
   * The call is answered. Work a handler left behind that listens to the signal is told to stop;
   * a signal nobody listens to is left alone, which spares an event per call.
   */
  finish(): void {
    if (this.over) return;
    this.over = true;
    clearTimeout(this.timer);
    if (listenedTo(this.signal)) this.controller.abort(callFinished);
    this.cutShort(callFinished);
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

function listenedTo(signal: AbortSignal): boolean {
  return getEventListeners(signal, "abort").length > 0;
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
 * never look at it (only rate limiting of anonymous callers does).
 */
export function callValues(peer: () => string): ContextValues {
  const values: Record<symbol, unknown> = {};
  return {
    get<T>(key: ContextKey<T>): T {
      if (key.id in values) return values[key.id] as T;
      if (key === (peerKey as ContextKey<unknown>)) return (values[key.id] = peer()) as T;
      return key.defaultValue;
    },
    set<T>(key: ContextKey<T>, value: T) {
      values[key.id] = value;
      return this;
    },
    delete(key: ContextKey<unknown>) {
      delete values[key.id];
      return this;
    },
  };
}
