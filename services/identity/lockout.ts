import type { ConnectError } from "@connectrpc/connect";
import { resourceExhausted } from "../../platform/grpc/errors.js";
import type { IdentityContext } from "./context.js";
import type { UserRow } from "./tables.js";

// Shared by every check of a secret a person types (password at Login, code at VerifyMfa), so a
// guesser gains nothing by switching between them. The counting itself is the store's, in one
// statement.

function lockedOut(until: Date, now: Date): ConnectError {
  const ms = Math.max(1000, until.getTime() - now.getTime());
  return resourceExhausted(`too many failed sign-ins; try again in ${Math.ceil(ms / 1000)} seconds`, ms);
}

/** Refuses before the secret is checked: guesses made while the lock lasts are not even tried. */
export function refuseIfLocked({ now }: IdentityContext, user: UserRow): void {
  const at = now();
  if (user.locked_until && new Date(user.locked_until) > at) throw lockedOut(new Date(user.locked_until), at);
}

/** Counts a failed credential and answers what the caller should hear. */
export async function failedCredential(
  { store, audit, now }: IdentityContext,
  user: UserRow,
  event: string,
  err: ConnectError,
): Promise<ConnectError> {
  const at = now();
  const { locked_until, justLocked } = await store.recordLoginFailure(user.id, at);
  await audit({ event, userId: user.id }, at);
  if (justLocked && locked_until) {
    await audit(
      { event: "account_locked", userId: user.id, details: { until: new Date(locked_until).toISOString() } },
      at,
    );
    return lockedOut(new Date(locked_until), at);
  }
  return err;
}
