import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

export interface DeadlinePolicy {
  /** Applied when a unary caller sets no deadline, so no call can hold resources forever. */
  defaultUnaryMs: number;
  /** The longest deadline a caller may ask for on a unary call. */
  maxUnaryMs: number;
}

/**
 * Caps and defaults deadlines. A call whose deadline has already passed is refused before it
 * touches any resource. Streams (watches, uploads) are bounded by the client or by shutdown.
 */
export function deadlineInterceptor(policy: DeadlinePolicy): Interceptor {
  return (next) => async (req) => {
    if (req.signal.aborted) {
      throw new ConnectError("the deadline expired before the call started", Code.DeadlineExceeded);
    }
    if (req.stream) return next(req);
    const limit = AbortSignal.timeout(policy.maxUnaryMs);
    const signal = AbortSignal.any([req.signal, limit]);
    const timer = new Promise<never>((_, reject) => {
      signal.addEventListener(
        "abort",
        () =>
          reject(
            limit.aborted
              ? new ConnectError(`the call exceeded the longest allowed duration of ${policy.maxUnaryMs} ms`, Code.DeadlineExceeded)
              : ConnectError.from(req.signal.reason ?? new ConnectError("deadline exceeded", Code.DeadlineExceeded)),
          ),
        { once: true },
      );
    });
    timer.catch(() => undefined);
    return Promise.race([next({ ...req, signal }), timer]);
  };
}
