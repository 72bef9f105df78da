import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { callerOf } from "../../platform/grpc/caller.js";

/** Identity's views of the verified caller (see platform/grpc/caller.ts). */

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
