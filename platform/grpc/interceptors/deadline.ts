import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { alreadyCutShort } from "../handler-context.js";

/**
 * Refuses a call whose deadline has already passed before it touches any resource.
 * Defaults and caps are applied where the handler context is made: by the adapter
 * (platform/grpc/adapter.ts) and, at the gateway, by connect-node's maxTimeoutMs and the
 * forwarder's default; so every handler sees its effective deadline in ctx.timeoutMs().
 */
export function deadlineInterceptor(): Interceptor {
  return (next) => (req) => {
    if (alreadyCutShort(req)) {
      return Promise.reject(new ConnectError("the deadline expired before the call started", Code.DeadlineExceeded));
    }
    return next(req);
  };
}
