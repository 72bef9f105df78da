import { Code, ConnectError } from "@connectrpc/connect";
import type { IdentityContext } from "./context.js";
import type { UserRow } from "./tables.js";

/** The caller's own account; a valid token can outlive it, and then the caller is nobody. */
export async function accountOf({ store }: IdentityContext, userId: string): Promise<UserRow> {
  const user = await store.userById(userId);
  if (!user) throw new ConnectError("this account no longer exists", Code.Unauthenticated);
  return user;
}

/** Checked only once the secret was right, so only the account's owner learns it is disabled. */
export function refuseIfDisabled(user: UserRow): void {
  if (!user.active) throw new ConnectError("this account is disabled", Code.PermissionDenied);
}

export async function mfaEnabled({ store }: IdentityContext, userId: string): Promise<boolean> {
  return Boolean((await store.mfa(userId))?.confirmed_at);
}
