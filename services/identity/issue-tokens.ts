import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { TokensSchema, type Tokens } from "../../gen/medmesh/identity/v1/identity_pb.js";
import type { IdentityContext } from "./context.js";
import type { OneTimePurpose, UserRow } from "./tables.js";
import { ACCESS_TOKEN_TTL_SECONDS, hashToken, newAccessClaims, newOpaqueToken, signAccessToken } from "./tokens.js";

// What the service hands out, in one place so every path that issues a credential issues it alike:
// access tokens (sign-in, refresh, API key exchange), sessions and one-time tokens.

export async function accessToken(
  { keys, now }: IdentityContext,
  who: Parameters<typeof newAccessClaims>[0],
): Promise<string> {
  return signAccessToken(newAccessClaims(who, now()), await keys.signingKey());
}

/** The answer to a sign-in or a refresh: a new access token for the session and its next refresh token. */
export async function sessionTokens(
  identity: IdentityContext,
  user: UserRow,
  sessionId: string,
  refreshToken: string,
): Promise<Tokens> {
  return create(TokensSchema, {
    accessToken: await accessToken(identity, { sub: user.id, role: user.role, kind: "user", sid: sessionId }),
    tokenType: "Bearer",
    expiresInSeconds: ACCESS_TOKEN_TTL_SECONDS,
    refreshToken,
    sessionId,
  });
}

export async function startSession(identity: IdentityContext, user: UserRow): Promise<Tokens> {
  const at = identity.now();
  const sessionId = randomUUID();
  const refresh = newOpaqueToken();
  await identity.store.insertSession(
    {
      id: sessionId,
      user_id: user.id,
      created_at: at,
      last_used_at: at,
      expires_at: new Date(at.getTime() + identity.sessionTtlMs),
    },
    hashToken(refresh),
  );
  return sessionTokens(identity, user, sessionId, refresh);
}

/** A single-use secret for one user and purpose; only its hash is stored. */
export async function issueOneTimeToken(
  { store, now }: IdentityContext,
  userId: string,
  purpose: OneTimePurpose,
  ttlMs: number,
): Promise<{ token: string; expiresAt: Date; linkId: string }> {
  const at = now();
  const token = newOpaqueToken();
  const expiresAt = new Date(at.getTime() + ttlMs);
  const linkId = await store.insertOneTimeToken({
    token_hash: hashToken(token),
    user_id: userId,
    purpose,
    created_at: at,
    expires_at: expiresAt,
  });
  return { token, expiresAt, linkId };
}
