import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Code } from "@connectrpc/connect";
import { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { ConfigError, loadConfig } from "../../platform/config/env.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { backends, testEnv } from "../../test/support/backends.js";
import { rejection } from "../../test/support/rejection.js";
import { parseBootstrapKeys } from "./bootstrap-keys.js";
import { configSpec, startIdentity } from "./main.js";

const newKey = () => `mmk_${randomBytes(32).toString("base64url")}`;
const claimsOf = (token: string) =>
  JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString()) as Record<string, unknown>;

describe("IDENTITY_BOOTSTRAP_API_KEYS", () => {
  it("reads name=key pairs", () => {
    const [a, b] = [newKey(), newKey()];
    expect(parseBootstrapKeys(` processing=${a} , search-indexer=${b} `)).toEqual([
      { name: "processing", key: a },
      { name: "search-indexer", key: b },
    ]);
    expect(parseBootstrapKeys("")).toEqual([]);
  });

  const key = newKey();
  it.each([
    ["an entry without =", `processing${key}`, /entry 1 is not name=key/],
    ["a name that CreateApiKey would refuse", `Processing Worker=${key}`, /name must be/],
    ["a key without the mmk_ prefix", `processing=${key.slice(4)}`, /must be mmk_ followed by at least 43/],
    ["a short key", "processing=mmk_secret", /must be mmk_ followed by at least 43/],
    ["a long key with little randomness", `processing=mmk_${"ab".repeat(30)}`, /not random enough/],
    ["a name twice", `processing=${key},processing=${newKey()}`, /processing is listed twice/],
    ["one key for two names", `processing=${key},search=${key}`, /same key as another entry/],
  ])("refuses %s at start, naming the setting and never the key", (_what, raw, message) => {
    let caught: unknown;
    try {
      loadConfig(configSpec, { IDENTITY_BOOTSTRAP_API_KEYS: raw });
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    const problems = (caught as ConfigError).problems;
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^IDENTITY_BOOTSTRAP_API_KEYS: /);
    expect(problems[0]).toMatch(message);
    expect(problems[0]).not.toContain(key.slice(4, 20));
    expect(problems[0]).not.toContain("secret");
  });
});

describe.each(backends())("configured service keys on $name", (backend) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-bootstrap-keys-"));
  // The same database across restarts: on disk for PGlite, one schema on the real server.
  const env = {
    ...testEnv,
    ...(backend.env.DATABASE_URL ? { DATABASE_URL: backend.env.DATABASE_URL } : {}),
    MEDMESH_DATA_DIR: dataDir,
    IDENTITY_PORT: "0",
    IDENTITY_DB_SCHEMA: `identity_k${randomBytes(4).toString("hex")}`,
    IDENTITY_SCRYPT_LOG_N: "14",
    IDENTITY_BOOTSTRAP_ADMIN_EMAIL: "root@medmesh.test",
  };
  afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

  /** Starts identity with these keys configured, runs `use` against it, stops it. */
  async function withIdentity<T>(
    keys: string,
    use: (client: ReturnType<typeof createMeshClient<typeof IdentityService>>) => Promise<T>,
  ): Promise<T> {
    const svc = await startIdentity({ ...env, IDENTITY_BOOTSTRAP_API_KEYS: keys });
    const client = createMeshClient(IdentityService, `127.0.0.1:${svc.port}`, { defaultTimeoutMs: 10_000 });
    try {
      return await use(client);
    } finally {
      client.close();
      await svc.stop();
    }
  }

  async function adminAuth(client: ReturnType<typeof createMeshClient<typeof IdentityService>>) {
    await client
      .register({
        email: "root@medmesh.test",
        username: "root",
        password: "a long admin password",
        firstName: "R",
        lastName: "T",
      })
      .catch(() => undefined);
    const res = await client.login({ login: "root", password: "a long admin password" });
    if (res.result.case !== "tokens") throw new Error("no tokens");
    return { headers: { authorization: `Bearer ${res.result.value.accessToken}` } };
  }

  const first = newKey();
  const second = newKey();

  it("exist from the first start, as a service key that exchanges for a service token, and stay one key across restarts", async () => {
    for (let start = 0; start < 2; start++) {
      await withIdentity(`processing=${first}`, async (client) => {
        const { accessToken, expiresInSeconds } = await client.exchangeApiKey({ apiKey: first });
        expect(claimsOf(accessToken)).toMatchObject({ sub: "processing", role: "service", kind: "service" });
        expect(expiresInSeconds).toBe(900);
        const listed = (await client.listApiKeys({ includeRevoked: true }, await adminAuth(client))).apiKeys;
        expect(listed.map((k) => [k.name, k.createdBy, k.prefix])).toEqual([
          ["processing", "bootstrap", first.slice(0, 10)],
        ]);
      });
    }
  });

  it("a new secret for the name replaces the old one: the old key is refused from then on", async () => {
    await withIdentity(`processing=${second}`, async (client) => {
      expect((await client.exchangeApiKey({ apiKey: second })).accessToken).toBeTruthy();
      expect((await rejection(client.exchangeApiKey({ apiKey: first }))).code).toBe(Code.Unauthenticated);
      const listed = (await client.listApiKeys({ includeRevoked: true }, await adminAuth(client))).apiKeys;
      expect(listed.filter((k) => !k.revokeTime).map((k) => k.prefix)).toEqual([second.slice(0, 10)]);
      expect(listed).toHaveLength(2);
    });
  });

  it("a configured key an admin revoked is not brought back by a restart", async () => {
    await withIdentity(`processing=${second}`, async (client) => {
      const auth = await adminAuth(client);
      const live = (await client.listApiKeys({ includeRevoked: false }, auth)).apiKeys;
      await client.revokeApiKey({ id: live[0]!.id }, auth);
    });
    await withIdentity(`processing=${second}`, async (client) => {
      expect((await rejection(client.exchangeApiKey({ apiKey: second }))).code).toBe(Code.Unauthenticated);
    });
  });
});
