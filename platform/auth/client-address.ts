import { createHmac, timingSafeEqual } from "node:crypto";
import { isIP } from "node:net";

/**
 * The gateway's signed statement of which client a forwarded call comes from.
 *
 * Behind the gateway every service sees one peer, the gateway, so anything keyed by address
 * (the anonymous rate-limit buckets) would be one key for the whole internet. The gateway
 * therefore vouches for the address it saw in a mesh-only header, and a service believes that
 * header only when it carries a valid HMAC-SHA256 made with the mesh's shared secret
 * (MESH_EDGE_SECRET) over the address, the method the call is for and when it was made.
 * Binding the method and the time means a statement seen once cannot be reused for another
 * method, or for long. Pure (the clock is an argument), like the access-token checks.
 *
 * Wire form: `v1 <issued at, ms since the epoch> <address> <signature, base64url>`.
 */

export const CLIENT_ADDRESS_HEADER = "x-medmesh-client-address";

/** How far a statement's time may be from the verifier's clock, either way (covers clock skew). */
export const CLIENT_ADDRESS_WINDOW_MS = 30_000;

export interface EdgeSecrets {
  /** Signs new statements: the first configured secret. */
  signing: Buffer;
  /** Any of these verifies one: during a rotation the old and the new secret are both listed. */
  accepted: Buffer[];
}

const MIN_SECRET_LENGTH = 32;

/**
 * Parses MESH_EDGE_SECRET: one secret, or several comma-separated while one replaces another
 * (the first signs, every one verifies). Throws a sentence that never quotes a secret.
 */
export function parseEdgeSecrets(raw: string): EdgeSecrets {
  const parts = raw.split(",").map((s) => s.trim());
  if (parts.some((p) => p.length < MIN_SECRET_LENGTH || !/^[\x21-\x7e]+$/.test(p))) {
    throw new Error(
      `each secret must be at least ${MIN_SECRET_LENGTH} printable characters without spaces, e.g. ` +
        `node -e "console.log(require('crypto').randomBytes(32).toString('base64url'))"`,
    );
  }
  const accepted = parts.map((p) => Buffer.from(p, "utf8"));
  return { signing: accepted[0]!, accepted };
}

function mac(secret: Buffer, address: string, path: string, issuedAt: string): Buffer {
  // Newline-separated: none of the three can contain one, so no two inputs share a message.
  return createHmac("sha256", secret).update(`medmesh-client-address v1\n${path}\n${issuedAt}\n${address}`).digest();
}

/** The header value saying that the call to `path` comes from `address`. */
export function vouchForAddress(secrets: EdgeSecrets, address: string, path: string, now: number): string {
  const issuedAt = String(Math.floor(now));
  return `v1 ${issuedAt} ${address} ${mac(secrets.signing, address, path, issuedAt).toString("base64url")}`;
}

export type VouchedAddress =
  { ok: true; address: string } | { ok: false; reason: "malformed" | "bad_signature" | "expired" | "not_yet_valid" };

/** Checks a statement for a call to `path`; the address is believed only when this says ok. */
export function checkVouchedAddress(
  secrets: EdgeSecrets,
  value: string,
  path: string,
  now: number,
  windowMs = CLIENT_ADDRESS_WINDOW_MS,
): VouchedAddress {
  const parts = value.split(" ");
  if (parts.length !== 4 || parts[0] !== "v1") return { ok: false, reason: "malformed" };
  const [, issuedAt, address, signature] = parts as [string, string, string, string];
  if (!/^\d{1,15}$/.test(issuedAt) || isIP(address) === 0) return { ok: false, reason: "malformed" };
  const presented = Buffer.from(signature, "base64url");
  const genuine = secrets.accepted.some((secret) => {
    const expected = mac(secret, address, path, issuedAt);
    return presented.length === expected.length && timingSafeEqual(presented, expected);
  });
  if (!genuine) return { ok: false, reason: "bad_signature" };
  // The time only once the signature holds: until then it is whatever the sender wrote.
  const age = now - Number(issuedAt);
  if (age > windowMs) return { ok: false, reason: "expired" };
  if (age < -windowMs) return { ok: false, reason: "not_yet_valid" };
  return { ok: true, address };
}
