import type { DescMethod } from "@bufbuild/protobuf";
import { ConnectError, type Interceptor, type StreamResponse, type UnaryResponse } from "@connectrpc/connect";
import { toConnectError } from "../errors.js";
import { rpcName } from "./rpc-name.js";
import { finishWith, type StreamHooks } from "./stream-end.js";

/** Whatever a handler throws leaves as a ConnectError with a sentence, never a stack trace. */
export function errorsInterceptor(): Interceptor {
  const noop = () => {};
  // Per call only inline arrows: under tsx every named closure made per call costs a __name call.
  const mask = (req: { method: DescMethod; signal: AbortSignal }, err: unknown) =>
    toConnectError(err, rpcName(req.method), err instanceof ConnectError ? undefined : req.signal);
  const streamHooks: StreamHooks<{ method: DescMethod; signal: AbortSignal }> = { end: noop, mapError: mask };
  return (next) => (req) => {
    let pending: Promise<UnaryResponse | StreamResponse>;
    try {
      pending = next(req);
    } catch (err) {
      return Promise.reject(mask(req, err));
    }
    return pending.then(
      (res) => (res.stream ? finishWith(res, streamHooks, req) : res),
      (err: unknown) => {
        throw mask(req, err);
      },
    ) as ReturnType<typeof next>;
  };
}
