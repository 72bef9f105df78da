import { createPublicKey, verify, type KeyObject } from "node:crypto";

/**
 * Verification of medmesh access tokens: compact JWS (RFC 7515/7519) signed with Ed25519
 * ("EdDSA", RFC 8037) by the identity service. Pure (the clock is an argument), so the gateway
 * and every service check tokens locally against the published key set, the same way, without
 * calling identity per request. Signing lives with identity (services/identity/tokens.ts).
 */

export const ISSUER = "medmesh-identity";
export const AUDIENCE = "medmesh";
export const ACCESS_TOKEN_TTL_SECONDS = 900;

export type PrincipalKindName = "user" | "device" | "service";
export type RoleName = "admin" | "doctor" | "researcher" | "student" | "device" | "service";
const roleNames: ReadonlySet<string> = new Set<RoleName>([
  "admin",
  "doctor",
  "researcher",
  "student",
  "device",
  "service",
]);
const kindNames: ReadonlySet<string> = new Set<PrincipalKindName>(["user", "device", "service"]);

export interface Jwk {
  kty: "OKP";
  crv: "Ed25519";
  /** The raw 32-byte public key, base64url. */
  x: string;
  kid: string;
  alg: "EdDSA";
  use: "sig";
}

export interface Jwks {
  keys: Jwk[];
}

export interface AccessClaims {
  iss: string;
  aud: string;
  sub: string;
  role: RoleName;
  kind: PrincipalKindName;
  /** Session id; users only. */
  sid?: string;
  iat: number;
  nbf: number;
  exp: number;
  jti: string;
}

export type VerifyFailureReason =
  | "malformed"
  | "unsupported_algorithm"
  | "unknown_key"
  | "bad_signature"
  | "bad_claims"
  | "wrong_issuer"
  | "wrong_audience"
  | "expired"
  | "not_yet_valid";

export type VerifyResult =
  { ok: true; claims: AccessClaims; kid: string } | { ok: false; reason: VerifyFailureReason; message: string };

export interface VerifyOptions {
  now: Date | number;
  issuer?: string;
  audience?: string;
  /** Seconds of clock difference between issuer and verifier to forgive; 0 unless told. */
  clockToleranceSeconds?: number;
}

const B64URL = /^[A-Za-z0-9_-]+$/;

/** Strict base64url: the alphabet only, and canonical, so one token has exactly one spelling. */
function decodeSegment(seg: string): Buffer | undefined {
  if (!B64URL.test(seg)) return undefined;
  const buf = Buffer.from(seg, "base64url");
  return buf.toString("base64url") === seg ? buf : undefined;
}

function parseJson(buf: Buffer): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(buf.toString("utf8"));
    return v && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

const keyCache = new WeakMap<Jwk, KeyObject | null>();

function publicKeyOf(jwk: Jwk): KeyObject | undefined {
  if (!keyCache.has(jwk)) {
    let key: KeyObject | null = null;
    if (jwk.kty === "OKP" && jwk.crv === "Ed25519" && (jwk.alg === undefined || jwk.alg === "EdDSA")) {
      try {
        key = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: jwk.x }, format: "jwk" });
      } catch {
        key = null;
      }
    }
    keyCache.set(jwk, key);
  }
  return keyCache.get(jwk) ?? undefined;
}

const fail = (reason: VerifyFailureReason, message: string): VerifyResult => ({ ok: false, reason, message });
const isInt = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v);
const isText = (v: unknown): v is string => typeof v === "string" && v.length > 0 && v.length <= 256;

/**
 * Checks an access token against a JWKS. Only EdDSA with a kid in the set is accepted: "none",
 * HMAC (including HMAC keyed with the public key) and every other algorithm are refused before
 * any key is looked at. Claims are read only after the signature holds.
 */
export function verifyAccessToken(token: string, jwks: Jwks, opts: VerifyOptions): VerifyResult {
  if (typeof token !== "string" || token.length > 4096) return fail("malformed", "the token is not a JWT");
  const parts = token.split(".");
  if (parts.length !== 3) return fail("malformed", "the token is not a JWT");
  const [h, p, s] = parts as [string, string, string];
  const headerBytes = decodeSegment(h);
  const payloadBytes = decodeSegment(p);
  const signature = decodeSegment(s);
  if (!headerBytes || !payloadBytes || !signature) return fail("malformed", "the token is not a JWT");
  const header = parseJson(headerBytes);
  if (!header) return fail("malformed", "the token header is not a JSON object");
  if (header.alg !== "EdDSA")
    return fail("unsupported_algorithm", `tokens signed with ${JSON.stringify(header.alg ?? null)} are not accepted`);
  if (header.typ !== undefined && header.typ !== "JWT") return fail("malformed", "the token is not a JWT");
  // Extensions we do not implement must not be silently ignored (RFC 7515 §4.1.11).
  if (header.crit !== undefined) return fail("malformed", "the token header names critical extensions");
  if (!isText(header.kid)) return fail("unknown_key", "the token names no signing key");
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  const key = jwk && publicKeyOf(jwk);
  if (!key) return fail("unknown_key", "the token was signed with a key that is not in the key set");
  if (signature.length !== 64 || !verify(null, Buffer.from(`${h}.${p}`), key, signature)) {
    return fail("bad_signature", "the token signature does not match");
  }

  const c = parseJson(payloadBytes);
  if (!c) return fail("bad_claims", "the token payload is not a JSON object");
  if (
    !isText(c.iss) ||
    !(isText(c.aud) || (Array.isArray(c.aud) && c.aud.every(isText))) ||
    !isText(c.sub) ||
    !isText(c.jti) ||
    typeof c.role !== "string" ||
    !roleNames.has(c.role) ||
    typeof c.kind !== "string" ||
    !kindNames.has(c.kind) ||
    !isInt(c.iat) ||
    !isInt(c.nbf) ||
    !isInt(c.exp) ||
    (c.kind === "user" ? !isText(c.sid) : c.sid !== undefined) ||
    (c.kind === "user") !== !["device", "service"].includes(c.role) ||
    (c.kind !== "user" && c.kind !== c.role)
  ) {
    return fail("bad_claims", "the token claims are incomplete or inconsistent");
  }
  const issuer = opts.issuer ?? ISSUER;
  const audience = opts.audience ?? AUDIENCE;
  if (c.iss !== issuer) return fail("wrong_issuer", "the token was issued by someone else");
  const auds = Array.isArray(c.aud) ? c.aud : [c.aud];
  if (!auds.includes(audience)) return fail("wrong_audience", "the token is meant for another audience");
  const now = Math.floor((typeof opts.now === "number" ? opts.now : opts.now.getTime()) / 1000);
  const tolerance = opts.clockToleranceSeconds ?? 0;
  if (now >= (c.exp as number) + tolerance) return fail("expired", "the token has expired");
  if (now + tolerance < (c.nbf as number)) return fail("not_yet_valid", "the token is not valid yet");
  return { ok: true, claims: c as unknown as AccessClaims, kid: header.kid };
}
