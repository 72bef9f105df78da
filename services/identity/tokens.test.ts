import { createHmac, generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { DEFAULT_PARAMS, hashPassword, needsRehash, verifyPassword } from "./passwords.js";
import {
  ACCESS_TOKEN_TTL_SECONDS,
  newAccessClaims,
  signAccessToken,
  signJws,
  verifyAccessToken,
  type Jwk,
  type Jwks,
} from "./tokens.js";
import { base32Decode, base32Encode, hotp, matchTotp, stepAt, totp } from "./totp.js";

function keyPair(kid: string) {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  const jwk: Jwk = {
    kty: "OKP",
    crv: "Ed25519",
    x: publicKey.export({ format: "jwk" }).x!,
    kid,
    alg: "EdDSA",
    use: "sig",
  };
  return { kid, privateKey, jwk };
}

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");

describe("verifyAccessToken", () => {
  const key = keyPair("k1");
  const jwks: Jwks = { keys: [key.jwk] };
  const t0 = new Date("2030-01-01T00:00:00Z");
  const claims = newAccessClaims({ sub: "user-1", role: "doctor", kind: "user", sid: "s-1" }, t0);
  const good = signAccessToken(claims, key);
  const at = (seconds: number) => ({ now: t0.getTime() + seconds * 1000 });
  const reason = (token: string, when = at(1), j = jwks) => {
    const r = verifyAccessToken(token, j, when);
    return r.ok ? "ok" : r.reason;
  };

  it("accepts a token it signed, with the claims and kid it carries", () => {
    const r = verifyAccessToken(good, jwks, at(1));
    expect(r).toMatchObject({
      ok: true,
      kid: "k1",
      claims: { iss: "medmesh-identity", aud: "medmesh", sub: "user-1", role: "doctor", kind: "user", sid: "s-1" },
    });
    if (r.ok) expect(r.claims.exp - r.claims.iat).toBe(ACCESS_TOKEN_TTL_SECONDS);
    const header = JSON.parse(Buffer.from(good.split(".")[0]!, "base64url").toString());
    expect(header).toEqual({ alg: "EdDSA", typ: "JWT", kid: "k1" });
  });

  it("refuses alg none, with or without a signature", () => {
    const input = `${b64({ alg: "none", typ: "JWT", kid: "k1" })}.${b64(claims)}`;
    expect(reason(`${input}.`)).toBe("malformed");
    expect(reason(`${input}.${good.split(".")[2]}`)).toBe("unsupported_algorithm");
    expect(reason(`${b64({ alg: "None", kid: "k1" })}.${b64(claims)}.${good.split(".")[2]}`)).toBe(
      "unsupported_algorithm",
    );
  });

  it("refuses HS256 signed with the public key, whichever encoding of it an attacker tries", () => {
    const input = `${b64({ alg: "HS256", typ: "JWT", kid: "k1" })}.${b64(claims)}`;
    const secrets = [Buffer.from(key.jwk.x, "base64url"), Buffer.from(key.jwk.x), Buffer.from(JSON.stringify(key.jwk))];
    for (const secret of secrets) {
      const sig = createHmac("sha256", secret).update(input).digest("base64url");
      expect(reason(`${input}.${sig}`)).toBe("unsupported_algorithm");
    }
  });

  it("refuses an expired token, from the second it expires", () => {
    expect(reason(good, at(ACCESS_TOKEN_TTL_SECONDS - 1))).toBe("ok");
    expect(reason(good, at(ACCESS_TOKEN_TTL_SECONDS))).toBe("expired");
    expect(reason(good, at(ACCESS_TOKEN_TTL_SECONDS + 30))).toBe("expired");
    expect(verifyAccessToken(good, jwks, { ...at(ACCESS_TOKEN_TTL_SECONDS + 30), clockToleranceSeconds: 60 }).ok).toBe(
      true,
    );
  });

  it("refuses a token before its nbf", () => {
    const future = signAccessToken(
      newAccessClaims({ sub: "u", role: "student", kind: "user", sid: "s" }, new Date(t0.getTime() + 3600_000)),
      key,
    );
    expect(reason(future, at(0))).toBe("not_yet_valid");
  });

  it("refuses a wrong issuer or audience even when properly signed", () => {
    expect(reason(signAccessToken({ ...claims, iss: "evil" }, key))).toBe("wrong_issuer");
    expect(reason(signAccessToken({ ...claims, aud: "another-app" }, key))).toBe("wrong_audience");
    expect(verifyAccessToken(good, jwks, { ...at(1), audience: "another-app" }).ok).toBe(false);
    expect(verifyAccessToken(good, jwks, { ...at(1), issuer: "another-issuer" }).ok).toBe(false);
  });

  it("refuses a kid outside the key set, and a key set kid whose key differs", () => {
    const stranger = keyPair("k2");
    expect(reason(signAccessToken(claims, stranger))).toBe("unknown_key");
    expect(reason(signAccessToken(claims, { kid: "k1", privateKey: stranger.privateKey }))).toBe("bad_signature");
    expect(reason(good, at(1), { keys: [] })).toBe("unknown_key");
  });

  it("refuses a tampered payload or signature", () => {
    const [h, , s] = good.split(".");
    expect(reason(`${h}.${b64({ ...claims, role: "admin" })}.${s}`)).toBe("bad_signature");
    const sig = Buffer.from(s!, "base64url");
    sig[0] = sig[0]! ^ 1;
    expect(reason(`${h}.${good.split(".")[1]}.${sig.toString("base64url")}`)).toBe("bad_signature");
  });

  it("refuses malformed tokens", () => {
    const [h, p, s] = good.split(".");
    const cases: Array<[string, string]> = [
      ["", "malformed"],
      ["abc", "malformed"],
      [`${h}.${p}`, "malformed"],
      [`${h}.${p}.${s}.x`, "malformed"],
      [`${h}=.${p}.${s}`, "malformed"],
      [`${h}.${p}.${s}==`, "malformed"],
      [`${h}.${p}.${s} `, "malformed"],
      [`${b64([1])}.${p}.${s}`, "malformed"],
      ["a.b.c", "malformed"],
      [`e30.${p}.${s}`, "unsupported_algorithm"],
      [`${b64({ alg: "EdDSA", typ: "JWT" })}.${p}.${s}`, "unknown_key"],
      [`${b64({ alg: "EdDSA", typ: "JWT", kid: "k1", crit: ["exp"] })}.${p}.${s}`, "malformed"],
      [`${h}.${p}.${s!.slice(0, -1)}+`, "malformed"],
      [`${h}.${p}.${Buffer.from(s!, "base64url").subarray(0, 63).toString("base64url")}`, "bad_signature"],
    ];
    for (const [t, why] of cases) expect([t, reason(t)]).toEqual([t, why]);
  });

  it("refuses signed claims that are missing or inconsistent", () => {
    expect(reason(signAccessToken({ ...claims, sid: undefined }, key))).toBe("bad_claims");
    expect(reason(signAccessToken({ ...claims, role: "root" as never }, key))).toBe("bad_claims");
    expect(reason(signAccessToken({ ...claims, kind: "device" }, key))).toBe("bad_claims");
    expect(reason(signJws({ alg: "EdDSA", typ: "JWT", kid: "k1" }, { ...claims, exp: "never" }, key.privateKey))).toBe(
      "bad_claims",
    );
  });
});

describe("TOTP", () => {
  // RFC 4226 appendix D and RFC 6238 appendix B (SHA-1), secret "12345678901234567890".
  const secret = Buffer.from("12345678901234567890");

  it("matches the RFC 4226 HOTP test values", () => {
    const expected = [
      "755224",
      "287082",
      "359152",
      "969429",
      "338314",
      "254676",
      "287922",
      "162583",
      "399871",
      "520489",
    ];
    expect(expected.map((_, i) => hotp(secret, i))).toEqual(expected);
  });

  it("matches the RFC 6238 SHA-1 test values", () => {
    const b32 = base32Encode(secret);
    const table: Array<[number, string]> = [
      [59, "94287082"],
      [1111111109, "07081804"],
      [1111111111, "14050471"],
      [1234567890, "89005924"],
      [2000000000, "69279037"],
      [20000000000, "65353130"],
    ];
    for (const [t, code] of table) expect(totp(b32, new Date(t * 1000), 8)).toBe(code);
  });

  it("base32 follows RFC 4648", () => {
    expect(base32Encode(Buffer.from("foobar"))).toBe("MZXW6YTBOI");
    expect(base32Decode("MZXW6YTBOI").toString()).toBe("foobar");
    expect(() => base32Decode("not base32!")).toThrow();
  });

  it("accepts one step either side, not two, and never a step at or before the last one used", () => {
    const b32 = base32Encode(secret);
    const now = new Date(1_700_000_000_000);
    const step = stepAt(now);
    const codeAt = (s: number) => hotp(secret, s);
    expect(matchTotp(b32, codeAt(step), now)).toBe(step);
    expect(matchTotp(b32, codeAt(step - 1), now)).toBe(step - 1);
    expect(matchTotp(b32, codeAt(step + 1), now)).toBe(step + 1);
    expect(matchTotp(b32, codeAt(step - 2), now)).toBeUndefined();
    expect(matchTotp(b32, codeAt(step + 2), now)).toBeUndefined();
    expect(matchTotp(b32, codeAt(step), now, step)).toBeUndefined();
    expect(matchTotp(b32, codeAt(step - 1), now, step)).toBeUndefined();
    expect(matchTotp(b32, codeAt(step + 1), now, step)).toBe(step + 1);
  });
});

describe("passwords", () => {
  it("hash with OWASP's scrypt parameters by default, and name them in the hash", async () => {
    const h = await hashPassword("correct horse battery staple");
    expect(h).toMatch(/^scrypt\$ln=17,r=8,p=1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{86}$/);
    expect(needsRehash(h)).toBe(false);
  });

  it("verify, and refuse a wrong password", async () => {
    // A cheap cost: what is checked here does not depend on it, and the default takes a second.
    const cheap = { ...DEFAULT_PARAMS, logN: 12 };
    const h = await hashPassword("correct horse battery staple", cheap);
    expect(await verifyPassword("correct horse battery staple", h)).toBe(true);
    expect(await verifyPassword("correct horse battery stapl", h)).toBe(false);
    expect(await hashPassword("correct horse battery staple", cheap)).not.toBe(h);
  });

  it("verify hashes made with other parameters, and ask for a rehash when they are weaker", async () => {
    const weak = await hashPassword("another long password", { ...DEFAULT_PARAMS, logN: 14 });
    expect(await verifyPassword("another long password", weak)).toBe(true);
    expect(needsRehash(weak)).toBe(true);
  });

  it("treat a malformed stored hash as a mismatch", async () => {
    expect(await verifyPassword("x", "plaintext")).toBe(false);
    expect(await verifyPassword("x", "scrypt$ln=40,r=8,p=1$AAAA$AAAA")).toBe(false);
  });
});
