import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code } from "@connectrpc/connect";
import { serviceToken } from "../platform/auth/service-token.js";
import { rejection } from "./support/rejection.js";
import { startTestIdentity, type TestIdentity } from "./support/identity.js";

const tokenOf = (h: { authorization: string }) => h.authorization.replace(/^Bearer /, "");
const claimsOf = (h: { authorization: string }) =>
  JSON.parse(Buffer.from(tokenOf(h).split(".")[1]!, "base64url").toString()) as {
    sub: string;
    role: string;
    exp: number;
    jti: string;
  };

describe("a service's access token from its API key", () => {
  const apiKey = `mmk_${randomBytes(32).toString("base64url")}`;
  let identity: TestIdentity;
  beforeAll(async () => {
    identity = await startTestIdentity({ IDENTITY_BOOTSTRAP_API_KEYS: `processing=${apiKey}` });
  });
  afterAll(() => identity?.stop());

  it("is exchanged once, shared by concurrent callers, and reused until shortly before it expires", async () => {
    let now = Date.now();
    const token = serviceToken({ identityTarget: identity.target, apiKey, now: () => now, renewBeforeMs: 60_000 });
    try {
      const together = await Promise.all(Array.from({ length: 5 }, () => token.headers()));
      expect(new Set(together.map(tokenOf)).size).toBe(1);
      expect(claimsOf(together[0]!)).toMatchObject({ sub: "processing", role: "service" });
      now += 800_000; // 13 min 20 s into a 15 min token: still more than a minute left
      expect(tokenOf(await token.headers())).toBe(tokenOf(together[0]!));
      now += 50_000; // under a minute left: exchanged again
      const renewed = await token.headers();
      expect(claimsOf(renewed).jti).not.toBe(claimsOf(together[0]!).jti);
      token.invalidate();
      expect(claimsOf(await token.headers()).jti).not.toBe(claimsOf(renewed).jti);
    } finally {
      token.close();
    }
  });

  it("a key identity does not know fails the call with unauthenticated, naming the setting and not the key", async () => {
    const wrong = `mmk_${randomBytes(32).toString("base64url")}`;
    const token = serviceToken({ identityTarget: identity.target, apiKey: wrong, keyName: "PROCESSING_API_KEY" });
    try {
      const err = await rejection(token.headers());
      expect(err.code).toBe(Code.Unauthenticated);
      expect(err.rawMessage).toContain("PROCESSING_API_KEY");
      expect(err.rawMessage).not.toContain(wrong.slice(4));
    } finally {
      token.close();
    }
  });
});
