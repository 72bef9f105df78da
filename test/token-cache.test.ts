import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { describe, expect, it } from "vitest";
import { Code } from "@connectrpc/connect";
import type { Jwk, Jwks } from "../platform/auth/access-token.js";
import type { KeySet } from "../platform/auth/key-set.js";
import { bearerPrincipalResolver } from "../platform/auth/principal.js";
import { verifiedTokens } from "../platform/auth/verified-tokens.js";
import { Role } from "../gen/medmesh/access/v1/access_pb.js";
import { newAccessClaims, signAccessToken, signJws } from "../services/identity/tokens.js";
import { rejection } from "./support/rejection.js";

interface Key {
  kid: string;
  privateKey: KeyObject;
  jwk: Jwk;
}

function newKey(kid: string): Key {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const x = (publicKey.export({ format: "jwk" }) as { x: string }).x;
  return { kid, privateKey, jwk: { kty: "OKP", crv: "Ed25519", x, kid, alg: "EdDSA", use: "sig" } };
}

/** What identity publishes, as the resolver sees it; `publish` is a rotation. */
function publishedKeys(initial: Key[]): KeySet & { publish(keys: Key[]): void } {
  let jwks: Jwks = { keys: initial.map((k) => k.jwk) };
  return {
    current: async () => jwks,
    held: () => jwks,
    refresh: async () => jwks,
    close: () => {},
    publish(keys) {
      jwks = { keys: keys.map((k) => k.jwk) };
    },
  };
}

const bearer = (token: string) => new Headers({ authorization: `Bearer ${token}` });
const T0 = Date.parse("2026-06-01T12:00:00Z");

function tokenFor(key: Key, sub: string, at = T0): string {
  return signAccessToken(newAccessClaims({ sub, role: "doctor", kind: "user", sid: "s1" }, new Date(at)), key);
}

describe("verified access tokens are remembered", () => {
  it("until the token expires: a remembered token is refused once the clock passes its expiry", async () => {
    const key = newKey("k1");
    let now = T0;
    const resolve = bearerPrincipalResolver(publishedKeys([key]), () => now);
    const token = tokenFor(key, "u-1");
    expect(await resolve(bearer(token))).toMatchObject({ subject: "u-1", role: Role.DOCTOR });
    now = T0 + 14 * 60_000; // remembered and still valid
    expect(await resolve(bearer(token))).toMatchObject({ subject: "u-1" });
    now = T0 + 15 * 60_000 + 6_000; // past exp and the 5 s tolerance
    const err = await rejection(resolve(bearer(token)));
    expect(err.code).toBe(Code.Unauthenticated);
    expect(err.rawMessage).toMatch(/expired/);
  });

  it("while its key is published: a key rotated out or replaced takes its remembered tokens with it", async () => {
    const old = newKey("k1");
    const next = newKey("k2");
    const keys = publishedKeys([old, next]);
    const resolve = bearerPrincipalResolver(keys, () => T0);
    const token = tokenFor(old, "u-1");
    expect(await resolve(bearer(token))).toMatchObject({ subject: "u-1" });

    keys.publish([next]);
    const gone = await rejection(resolve(bearer(token)));
    expect(gone.code).toBe(Code.Unauthenticated);
    expect(gone.rawMessage).toMatch(/not in the key set/);

    // The same kid, another key: not the key that signed the token.
    keys.publish([{ ...newKey("k1") }, next]);
    expect((await rejection(resolve(bearer(token)))).code).toBe(Code.Unauthenticated);

    // Tokens of the key still published are unaffected.
    expect(await resolve(bearer(tokenFor(next, "u-2")))).toMatchObject({ subject: "u-2" });
  });

  it("only when genuine: a forged token is refused every time, and never shadows the real one", async () => {
    const key = newKey("k1");
    const attacker = newKey("k1");
    const resolve = bearerPrincipalResolver(publishedKeys([key]), () => T0);
    const claims = newAccessClaims({ sub: "admin-1", role: "admin", kind: "user", sid: "s1" }, new Date(T0));
    const forged = signJws({ alg: "EdDSA", typ: "JWT", kid: "k1" }, claims, attacker.privateKey);
    for (let i = 0; i < 3; i++) {
      const err = await rejection(resolve(bearer(forged)));
      expect(err.code).toBe(Code.Unauthenticated);
      expect(err.rawMessage).toMatch(/signature/);
    }
    const genuine = signJws({ alg: "EdDSA", typ: "JWT", kid: "k1" }, claims, key.privateKey);
    expect(await resolve(bearer(genuine))).toMatchObject({ subject: "admin-1", role: Role.ADMIN });
    // A remembered token with its signature tampered with is another string, checked in full.
    const tampered = genuine.slice(0, -2) + (genuine.endsWith("AA") ? "AB" : "AA");
    expect((await rejection(resolve(bearer(tampered)))).code).toBe(Code.Unauthenticated);
    expect((await rejection(resolve(bearer(forged)))).code).toBe(Code.Unauthenticated);
  });

  it("within a bound: the least recently used token makes way, and a small cache still answers correctly", async () => {
    const key = newKey("k1");
    const jwks: Jwks = { keys: [key.jwk] };
    const cache = verifiedTokens<string>({ maxEntries: 3, clockToleranceSeconds: 0 });
    const now = Math.floor(T0 / 1000);
    for (const t of ["a", "b", "c"]) cache.remember(t, t.toUpperCase(), key.jwk, now + 60);
    expect(cache.get("a", jwks, now)).toBe("A"); // a is now the most recent
    cache.remember("d", "D", key.jwk, now + 60);
    cache.remember("e", "E", key.jwk, now + 60);
    expect(cache.size).toBe(3);
    expect(cache.get("b", jwks, now)).toBeUndefined();
    expect(cache.get("c", jwks, now)).toBeUndefined();
    expect([cache.get("a", jwks, now), cache.get("d", jwks, now), cache.get("e", jwks, now)]).toEqual(["A", "D", "E"]);

    const resolve = bearerPrincipalResolver(publishedKeys([key]), () => T0, { maxCachedTokens: 2 });
    for (let round = 0; round < 2; round++) {
      for (const sub of ["u-1", "u-2", "u-3", "u-4"]) {
        expect(await resolve(bearer(tokenFor(key, sub)))).toMatchObject({ subject: sub });
      }
    }
  });

  it("answers without waiting only what the full check would: a token verified before, under the keys held", async () => {
    const key = newKey("k1");
    const keys = publishedKeys([key]);
    let now = T0;
    const resolve = bearerPrincipalResolver(keys, () => now);
    const token = tokenFor(key, "u-1");
    // Not checked yet, no header, or a header the full parser must judge: ask the resolver.
    expect(resolve.known!(bearer(token))).toBeUndefined();
    expect(resolve.known!(new Headers())).toBeUndefined();
    expect(resolve.known!(new Headers({ authorization: `bearer ${token}` }))).toBeUndefined();
    expect(await resolve(bearer(token))).toMatchObject({ subject: "u-1" });
    expect(resolve.known!(bearer(token))).toMatchObject({ subject: "u-1", role: Role.DOCTOR });
    // Anything after the token is another string, never a remembered one.
    expect(resolve.known!(new Headers({ authorization: `Bearer ${token} x` }))).toBeUndefined();
    // Rotated out: the same object is no longer answered, and the full check refuses it.
    keys.publish([newKey("k2")]);
    expect(resolve.known!(bearer(token))).toBeUndefined();
    expect((await rejection(resolve(bearer(token)))).code).toBe(Code.Unauthenticated);
    // Expired: the same.
    keys.publish([key]);
    expect(await resolve(bearer(token))).toMatchObject({ subject: "u-1" });
    now = T0 + 15 * 60_000 + 6_000;
    expect(resolve.known!(bearer(token))).toBeUndefined();
  });
});
