import type { Interceptor, StreamResponse, UnaryResponse } from "@connectrpc/connect";
import { toConnectError } from "../errors.js";
import { rpcName } from "./rpc-name.js";
import { finishWith } from "./stream-end.js";

/** Whatever a handler throws leaves as a ConnectError with a sentence, never a stack trace. */
export function errorsInterceptor(): Interceptor {
  const noop = () => {};
  return (next) => (req) => {
    const mask = (err: unknown) => toConnectError(err, rpcName(req.method), req.signal);
    let pending: Promise<UnaryResponse | StreamResponse>;
    try {
      pending = next(req);
    } catch (err) {
      return Promise.reject(mask(err));
    }
    return pending.then(
      (res) => (res.stream ? finishWith(res, { end: noop, mapError: mask }) : res),
      (err: unknown) => {
        throw mask(err);
      },
    ) as ReturnType<typeof next>;
  };
}
