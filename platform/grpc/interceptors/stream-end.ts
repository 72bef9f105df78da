import type { StreamResponse, UnaryResponse } from "@connectrpc/connect";

/**
 * Streams finish long after the interceptor returns, so work that belongs to the end of a call
 * (a log line, a span end, error mapping) wraps the response iterable. `each` may replace
 * or inspect every message; `wrapNext` runs each pull, e.g. inside a trace context.
 */
export function finishWith(
  res: UnaryResponse | StreamResponse,
  hooks: {
    end: (err?: unknown) => void;
    mapError?: (err: unknown) => unknown;
    wrapNext?: <T>(pull: () => Promise<T>) => Promise<T>;
  },
): UnaryResponse | StreamResponse {
  if (!res.stream) {
    hooks.end();
    return res;
  }
  const source = res.message;
  const wrapNext = hooks.wrapNext ?? (<T>(pull: () => Promise<T>) => pull());
  const message: AsyncIterable<unknown> = {
    [Symbol.asyncIterator]() {
      const it = source[Symbol.asyncIterator]();
      let finished = false;
      const finish = (err?: unknown) => {
        if (finished) return;
        finished = true;
        hooks.end(err);
      };
      return {
        async next() {
          try {
            const r = await wrapNext(() => it.next());
            if (r.done) finish();
            return r;
          } catch (err) {
            finish(err);
            throw hooks.mapError ? hooks.mapError(err) : err;
          }
        },
        async return(value?: unknown) {
          finish();
          await it.return?.(value as never);
          return { done: true, value: undefined };
        },
      };
    },
  };
  return { ...res, message } as StreamResponse;
}
