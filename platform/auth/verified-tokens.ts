import type { Jwks } from "./access-token.js";

/**
 * Access tokens that already passed a full check, so the next call carrying the same token skips
 * the Ed25519 verification and the claim parsing. A hit is only as good as what made the token
 * valid: it must still be before its expiry by the caller's clock, and the key that signed it
 * must still be in the current key set with the same public key (a key rotated out or removed
 * takes every token it signed with it). Only successes are kept; a forged or broken token is
 * checked in full every time it comes back. Bounded, least recently used out first.
 *
 * Key sets are values: a refreshed set is a new object, never the old one changed in place, so a
 * token whose key was found in this very object needs no second look.
 */
export interface VerifiedTokens<T> {
  /** The value remembered for `token`, if it is still valid at `nowSeconds` under `jwks`. */
  get(token: string, jwks: Jwks, nowSeconds: number): T | undefined;
  remember(token: string, value: T, signedBy: { kid: string; x: string }, expiresAtSeconds: number): void;
  readonly size: number;
}

interface Entry<T> {
  value: T;
  kid: string;
  x: string;
  /** The key set the signing key was last found in unchanged: the same set needs no second look. */
  checkedIn?: Jwks;
  /** The second it was last moved to the young end of the order. */
  touched: number;
  /** The first second the token is no longer accepted (its exp plus the clock tolerance). */
  refusedFrom: number;
}

export function verifiedTokens<T>(opts: { maxEntries: number; clockToleranceSeconds: number }): VerifiedTokens<T> {
  const entries = new Map<string, Entry<T>>();
  return {
    get(token, jwks, nowSeconds) {
      const e = entries.get(token);
      if (!e) return undefined;
      if (nowSeconds >= e.refusedFrom) {
        entries.delete(token);
        return undefined;
      }
      if (e.checkedIn !== jwks) {
        const key = jwks.keys.find((k) => k.kid === e.kid);
        if (!key || key.x !== e.x) {
          entries.delete(token);
          return undefined;
        }
        e.checkedIn = jwks;
      }
      // Map order is insertion order: re-inserting makes this the most recently used. Once a
      // second is enough for eviction order, and spares hashing the token twice more per call.
      if (e.touched !== nowSeconds) {
        e.touched = nowSeconds;
        entries.delete(token);
        entries.set(token, e);
      }
      return e.value;
    },
    remember(token, value, signedBy, expiresAtSeconds) {
      entries.delete(token);
      entries.set(token, {
        value,
        kid: signedBy.kid,
        x: signedBy.x,
        touched: 0,
        refusedFrom: expiresAtSeconds + opts.clockToleranceSeconds,
      });
      while (entries.size > opts.maxEntries) entries.delete(entries.keys().next().value!);
    },
    get size() {
      return entries.size;
    },
  };
}
