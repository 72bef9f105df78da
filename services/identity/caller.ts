import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { principalKey, type Principal } from "../../platform/grpc/interceptors/access.js";

/**
 * Who is calling. The mesh's access interceptor has verified the bearer token against identity's
 * own key ring and admitted the caller by the contract's policy before any handler runs; handlers
 * only read the result.
 */

/** The verified caller of a method whose policy requires one. */
export function callerOf(ctx: HandlerContext): Principal {
  const p = ctx.values.get(principalKey);
  if (!p) throw new ConnectError("sign in to call this method", Code.Unauthenticated);
  return p;
}

/** The caller as a user (not a device or service), for methods about one's own account. */
export function userOf(ctx: HandlerContext): string {
  const p = callerOf(ctx);
  if (p.kind !== "user")
    throw new ConnectError(`a ${p.kind} has no account; this method is for users`, Code.PermissionDenied);
  return p.subject;
}

/** The sign-in session of the caller's access token (users only). */
export function sessionOf(ctx: HandlerContext): string | undefined {
  return callerOf(ctx).sessionId;
}
