import { createHash, randomBytes, randomUUID, sign, type KeyObject } from "node:crypto";

/**
 * Issuing access tokens (compact JWS signed with Ed25519), and the opaque random values used for
 * refresh tokens, API keys and one-time links. Verification is the mesh's, in
 * platform/auth/access-token.ts, re-exported here for identity's own use.
 */
import {
  ACCESS_TOKEN_TTL_SECONDS,
  AUDIENCE,
  ISSUER,
  type AccessClaims,
  type PrincipalKindName,
  type RoleName,
} from "../../platform/auth/access-token.js";

export { ACCESS_TOKEN_TTL_SECONDS, AUDIENCE, ISSUER, type AccessClaims, type PrincipalKindName, type RoleName };
export {
  verifyAccessToken,
  type Jwk,
  type Jwks,
  type VerifyFailureReason,
  type VerifyOptions,
  type VerifyResult,
} from "../../platform/auth/access-token.js";

export interface SigningKey {
  kid: string;
  privateKey: KeyObject;
}

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");

/** Claims for a token issued now; the caller supplies who it is for. */
export function newAccessClaims(
  who: { sub: string; role: RoleName; kind: PrincipalKindName; sid?: string },
  now: Date,
): AccessClaims {
  const iat = Math.floor(now.getTime() / 1000);
  return {
    iss: ISSUER,
    aud: AUDIENCE,
    sub: who.sub,
    role: who.role,
    kind: who.kind,
    ...(who.sid ? { sid: who.sid } : {}),
    iat,
    nbf: iat,
    exp: iat + ACCESS_TOKEN_TTL_SECONDS,
    jti: randomUUID(),
  };
}

export function signAccessToken(claims: AccessClaims, key: SigningKey): string {
  return signJws({ alg: "EdDSA", typ: "JWT", kid: key.kid }, claims, key.privateKey);
}

/** Signs any header and payload with an Ed25519 key; exported for tests that forge tokens. */
export function signJws(header: object, payload: object, privateKey: KeyObject): string {
  const input = `${b64(header)}.${b64(payload)}`;
  return `${input}.${sign(null, Buffer.from(input), privateKey).toString("base64url")}`;
}

/** 32 random bytes, base64url: refresh tokens, one-time links, MFA challenges. */
export function newOpaqueToken(prefix = ""): string {
  return prefix + randomBytes(32).toString("base64url");
}

/**
 * SHA-256 of a high-entropy secret. Enough for values with 256 bits of randomness: a stolen
 * table gives nothing to guess. Passwords, which have little entropy, use scrypt instead.
 */
export function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("base64url");
}
