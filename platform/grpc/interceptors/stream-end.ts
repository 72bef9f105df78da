import type { StreamResponse, UnaryResponse } from "@connectrpc/connect";

/**
 * What an interceptor does at the end of a streamed response, and around each pull. The hooks
 * are made once per interceptor and get the call's `state` back, so a call costs one state
 * value per interceptor rather than a set of closures that a long-lived stream keeps alive.
 */
export interface StreamHooks<S> {
  /** The stream is over: `err` is what it failed with (as the interceptors inside it left it). */
  end(state: S, err?: unknown): void;
  /** Replaces the error the stream failed with, for the interceptors outside and the caller. */
  mapError?(state: S, err: unknown): unknown;
  /** Runs one pull of the stream, e.g. inside a trace context. */
  wrapNext?<T>(state: S, pull: () => Promise<T>): Promise<T>;
}

interface Hooked {
  hooks: StreamHooks<unknown>;
  state: unknown;
}

/**
 * A response stream with the end-of-call work of every interceptor it passed through. The
 * interceptors of one call share a single wrapper (each adds its hooks, innermost first), so
 * an idle stream waits on one pending pull however many interceptors watch it, instead of a
 * chain of wrappers, iterators and closures each holding its own pending promise.
 */
class FinishingStream implements AsyncIterable<unknown>, AsyncIterator<unknown> {
  private readonly hooked: Hooked[] = [];
  private it: AsyncIterator<unknown> | undefined;
  private finished = false;

  constructor(private readonly source: AsyncIterable<unknown>) {}

  /** Hooks can join until the stream is first read; after that a new wrapper is needed. */
  get open(): boolean {
    return this.it === undefined;
  }

  add(hooks: StreamHooks<unknown>, state: unknown): void {
    this.hooked.push({ hooks, state });
  }

  [Symbol.asyncIterator](): AsyncIterator<unknown> {
    this.it ??= this.source[Symbol.asyncIterator]();
    return this;
  }

  private pull(): Promise<IteratorResult<unknown>> {
    const it = this.it!;
    let pull = () => it.next();
    for (const h of this.hooked) {
      const wrap = h.hooks.wrapNext;
      if (!wrap) continue;
      const inner = pull;
      pull = () => wrap.call(h.hooks, h.state, inner) as Promise<IteratorResult<unknown>>;
    }
    return pull();
  }

  async next(): Promise<IteratorResult<unknown>> {
    this.it ??= this.source[Symbol.asyncIterator]();
    try {
      const r = await this.pull();
      if (r.done) this.finish();
      return r;
    } catch (err) {
      throw this.finish(err, true);
    }
  }

  async return(value?: unknown): Promise<IteratorResult<unknown>> {
    this.finish();
    await this.it?.return?.(value);
    return { done: true, value: undefined };
  }

  /** Runs every hook's end once, innermost first, each seeing the error as the ones inside mapped it. */
  private finish(err?: unknown, failed = false): unknown {
    if (this.finished) return err;
    this.finished = true;
    for (const { hooks, state } of this.hooked) {
      if (failed) {
        hooks.end(state, err);
        if (hooks.mapError) err = hooks.mapError(state, err);
      } else hooks.end(state);
    }
    return err;
  }
}

/** A response stream that hooks can be added to (the adapter makes its responses this way). */
export function finishingStream(source: AsyncIterable<unknown>): AsyncIterable<unknown> {
  return new FinishingStream(source);
}

/**
 * Streams finish long after the interceptor returns, so work that belongs to the end of a call
 * (a log line, a span end, error mapping) is attached to the response stream. A unary response
 * is over already: `end` runs at once.
 */
export function finishWith<S>(
  res: UnaryResponse | StreamResponse,
  hooks: StreamHooks<S>,
  state: S,
): UnaryResponse | StreamResponse {
  if (!res.stream) {
    hooks.end(state);
    return res;
  }
  const message = res.message;
  if (message instanceof FinishingStream && message.open) {
    message.add(hooks as StreamHooks<unknown>, state);
    return res;
  }
  const wrapped = new FinishingStream(message);
  wrapped.add(hooks as StreamHooks<unknown>, state);
  return { ...res, message: wrapped } as StreamResponse;
}
