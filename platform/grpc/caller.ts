import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { principalKey, type Principal } from "./interceptors/access.js";

/**
 * The verified caller of a method whose policy requires one. The access interceptor has checked
 * the bearer token and admitted the caller by the contract's policy before any handler runs;
 * handlers only read the result, so its absence here means the method's policy is public.
 */
export function callerOf(ctx: HandlerContext): Principal {
  const p = ctx.values.get(principalKey);
  if (!p) throw new ConnectError("sign in to call this method", Code.Unauthenticated);
  return p;
}
