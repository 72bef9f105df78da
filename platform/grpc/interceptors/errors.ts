import type { Interceptor } from "@connectrpc/connect";
import { toConnectError } from "../errors.js";
import { finishWith } from "./stream-end.js";

/** Whatever a handler throws leaves as a ConnectError with a sentence, never a stack trace. */
export function errorsInterceptor(): Interceptor {
  return (next) => async (req) => {
    const where = `${req.service.typeName}/${req.method.name}`;
    try {
      const res = await next(req);
      return finishWith(res, { end: () => {}, mapError: (err) => toConnectError(err, where, req.signal) });
    } catch (err) {
      throw toConnectError(err, where, req.signal);
    }
  };
}
