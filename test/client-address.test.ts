/**
 * The client's address behind the gateway. Identity limits credential calls per address; through
 * the gateway every call used to come from the gateway's address, so ten wrong passwords from
 * anywhere locked everyone out of Login and Register. The gateway now vouches for the address it
 * saw (HMAC with MESH_EDGE_SECRET), and services believe nothing else.
 *
 * Distinct clients are distinct loopback addresses (Linux routes all of 127.0.0.0/8 to lo, so a
 * client socket can bind 127.0.0.2, 127.0.0.3, …), or addresses a trusted proxy names in
 * X-Forwarded-For. Identity's auth bucket is 10 with a negligible refill, so counts are exact.
 */
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { createContextValues, type UnaryRequest } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IdentityService, LoginRequestSchema } from "../gen/medmesh/identity/v1/identity_pb.js";
import { startGateway } from "../gateway/main.js";
import {
  CLIENT_ADDRESS_HEADER,
  checkVouchedAddress,
  parseEdgeSecrets,
  type EdgeSecrets,
  vouchForAddress,
} from "../platform/auth/client-address.js";
import { clientAddressOf, parseTrustedProxies } from "../gateway/client-address.js";
import { clientAddressKey, vouchedAddressInterceptor } from "../platform/grpc/interceptors/client-address.js";
import { configureLogging } from "../platform/telemetry/logger.js";
import { testEnv } from "./support/backends.js";
import { startTestIdentity, type TestIdentity } from "./support/identity.js";

const SECRET = "test-mesh-edge-secret-0123456789abcdefghij";
const OTHER_SECRET = "another-mesh-edge-secret-0123456789abcdefg";
const secrets = parseEdgeSecrets(SECRET);
const LOGIN = "/medmesh.identity.v1.IdentityService/Login";
const REGISTER = "/medmesh.identity.v1.IdentityService/Register";
const TRUSTED_PROXY = "127.0.0.50";

describe("the gateway's statement of a client address", () => {
  const now = 1_765_000_000_000;

  it("is believed for the method and time it was made for", () => {
    const value = vouchForAddress(secrets, "198.51.100.7", LOGIN, now);
    expect(checkVouchedAddress(secrets, value, LOGIN, now + 1_000)).toEqual({ ok: true, address: "198.51.100.7" });
    const v6 = vouchForAddress(secrets, "2001:db8::7", LOGIN, now);
    expect(checkVouchedAddress(secrets, v6, LOGIN, now)).toEqual({ ok: true, address: "2001:db8::7" });
  });

  it("is refused when signed with another secret, tampered with, replayed elsewhere or late", () => {
    const value = vouchForAddress(secrets, "198.51.100.7", LOGIN, now);
    const forged = vouchForAddress(parseEdgeSecrets(OTHER_SECRET), "198.51.100.7", LOGIN, now);
    const [v, at, , sig] = value.split(" ");
    expect(checkVouchedAddress(secrets, forged, LOGIN, now)).toEqual({ ok: false, reason: "bad_signature" });
    expect(checkVouchedAddress(secrets, `${v} ${at} 198.51.100.8 ${sig}`, LOGIN, now)).toMatchObject({ ok: false });
    expect(checkVouchedAddress(secrets, `${v} ${Number(at) + 1} 198.51.100.7 ${sig}`, LOGIN, now)).toMatchObject({
      ok: false,
    });
    expect(checkVouchedAddress(secrets, value, REGISTER, now)).toEqual({ ok: false, reason: "bad_signature" });
    expect(checkVouchedAddress(secrets, value, LOGIN, now + 31_000)).toEqual({ ok: false, reason: "expired" });
    expect(checkVouchedAddress(secrets, value, LOGIN, now - 31_000)).toEqual({ ok: false, reason: "not_yet_valid" });
    for (const junk of ["", "v1", "198.51.100.7", `v2 ${at} 198.51.100.7 ${sig}`, `v1 ${at} not-an-ip ${sig}`]) {
      expect(checkVouchedAddress(secrets, junk, LOGIN, now), junk).toEqual({ ok: false, reason: "malformed" });
    }
  });

  it("survives a rotation: the first secret signs, every listed one verifies", () => {
    const rotating = parseEdgeSecrets(`${OTHER_SECRET},${SECRET}`);
    const old = vouchForAddress(secrets, "198.51.100.7", LOGIN, now);
    expect(checkVouchedAddress(rotating, old, LOGIN, now)).toMatchObject({ ok: true });
    const fresh = vouchForAddress(rotating, "198.51.100.7", LOGIN, now);
    expect(checkVouchedAddress(parseEdgeSecrets(OTHER_SECRET), fresh, LOGIN, now)).toMatchObject({ ok: true });
    expect(checkVouchedAddress(secrets, fresh, LOGIN, now)).toMatchObject({ ok: false });
  });

  it("needs secrets long enough to be secrets", () => {
    expect(() => parseEdgeSecrets("short")).toThrow(/at least 32/);
    expect(() => parseEdgeSecrets(`${SECRET},`)).toThrow(/at least 32/);
  });
});

describe("a service's interceptor", () => {
  /** Runs one call carrying `statement` through the interceptor; what the handler would see. */
  async function through(statement: string | undefined, configured: { secrets?: EdgeSecrets } = { secrets }) {
    const lines: Array<Record<string, unknown>> = [];
    configureLogging({ level: "debug", write: (line) => lines.push(JSON.parse(line)) });
    const header = new Headers(statement === undefined ? {} : { [CLIENT_ADDRESS_HEADER]: statement });
    const req = {
      header,
      service: IdentityService,
      method: IdentityService.method.login,
      contextValues: createContextValues(),
    } as unknown as UnaryRequest;
    let seen: { address: string | undefined; header: string | null } | undefined;
    try {
      await vouchedAddressInterceptor(configured.secrets)(async (r) => {
        seen = { address: r.contextValues.get(clientAddressKey), header: r.header.get(CLIENT_ADDRESS_HEADER) };
        return undefined as never;
      })(req);
    } finally {
      configureLogging({ level: "error", write: (line) => process.stdout.write(line + "\n") });
    }
    return { ...seen!, debug: lines.filter((l) => l.level === "debug" && l.component === "client-address") };
  }

  it("makes a genuine statement's address the client's, and hides the header from handlers", async () => {
    const seen = await through(vouchForAddress(secrets, "198.51.100.7", LOGIN, Date.now()));
    expect(seen).toMatchObject({ address: "198.51.100.7", header: null, debug: [] });
  });

  it("ignores anything else with a debug line naming why, and nothing for the caller", async () => {
    const forged = vouchForAddress(parseEdgeSecrets(OTHER_SECRET), "198.51.100.7", LOGIN, Date.now());
    const seen = await through(forged);
    expect(seen).toMatchObject({ address: undefined, header: null });
    expect(seen.debug).toEqual([expect.objectContaining({ rpc: LOGIN, reason: "bad_signature" })]);
    const unconfigured = await through(vouchForAddress(secrets, "198.51.100.7", LOGIN, Date.now()), {});
    expect(unconfigured.address).toBeUndefined();
    expect(unconfigured.debug).toEqual([expect.objectContaining({ reason: "no_secret_configured" })]);
    expect(await through(undefined)).toMatchObject({ address: undefined, debug: [] });
  });
});

describe("the client behind trusted proxies", () => {
  const trusted = parseTrustedProxies("10.0.0.0/8, 127.0.0.50, fd00::/8");

  it("is the peer itself unless the peer is a trusted proxy", () => {
    expect(clientAddressOf("192.0.2.1", "203.0.113.9", trusted)).toBe("192.0.2.1");
    expect(clientAddressOf("::ffff:192.0.2.1", undefined, trusted)).toBe("192.0.2.1");
    expect(clientAddressOf(undefined, "203.0.113.9", trusted)).toBeUndefined();
    expect(clientAddressOf("10.1.2.3", undefined, parseTrustedProxies(""))).toBe("10.1.2.3");
    expect(clientAddressOf("10.1.2.3", "203.0.113.9", parseTrustedProxies(""))).toBe("10.1.2.3");
  });

  it("is the nearest address in X-Forwarded-For that no trusted proxy accounts for", () => {
    expect(clientAddressOf("10.1.2.3", "203.0.113.9", trusted)).toBe("203.0.113.9");
    // What the client wrote itself sits to the left of what the proxies appended.
    expect(clientAddressOf("10.1.2.3", "6.6.6.6, 203.0.113.9, 10.9.9.9", trusted)).toBe("203.0.113.9");
    expect(clientAddressOf("::ffff:127.0.0.50", "2001:db8::9, fd00::1", trusted)).toBe("2001:db8::9");
    expect(clientAddressOf("10.1.2.3", ["6.6.6.6", "203.0.113.9"], trusted)).toBe("203.0.113.9");
  });

  it("stops at the first entry that is not an address, and falls back to the proxy", () => {
    expect(clientAddressOf("10.1.2.3", "203.0.113.9, garbage", trusted)).toBe("10.1.2.3");
    expect(clientAddressOf("10.1.2.3", "", trusted)).toBe("10.1.2.3");
    expect(clientAddressOf("10.1.2.3", "10.4.4.4, 10.5.5.5", trusted)).toBe("10.4.4.4");
  });

  it("refuses a list that is not addresses and prefixes", () => {
    expect(() => parseTrustedProxies("10.0.0.0/33")).toThrow(/10.0.0.0\/33/);
    expect(() => parseTrustedProxies("proxy.internal")).toThrow(/proxy.internal/);
  });
});

// ---------------------------------------------------------------------------------------------

let identity: TestIdentity;
let identityPort: number;
let gatewayPort: number;
let stopGateway: () => Promise<void>;

beforeAll(async () => {
  identity = await startTestIdentity({
    RATE_LIMITS: "read=100000:100000,write=100000:100000,auth=10:0.001",
    MESH_EDGE_SECRET: SECRET,
  });
  identityPort = Number(identity.target.split(":")[1]);
  // The gateway's own buckets are generous here: what is under test is what identity sees.
  const gw = await startGateway(
    {
      ...testEnv,
      IDENTITY_TARGET: identity.target,
      RATE_LIMITS: "read=100000:100000,auth=100000:100000",
      MESH_EDGE_SECRET: SECRET,
      GATEWAY_TRUSTED_PROXIES: `${TRUSTED_PROXY}/32`,
    },
    { services: [IdentityService] },
  );
  gatewayPort = gw.port;
  stopGateway = gw.stop;
});

afterAll(async () => {
  await stopGateway?.();
  await identity?.stop();
});

interface Answer {
  status: number;
  body: { code?: string; message?: string; user?: unknown; tokens?: unknown };
}

/** A Connect JSON call through the gateway from a given loopback address. */
function viaGateway(from: string, method: string, body: object, headers: Record<string, string> = {}): Promise<Answer> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: "127.0.0.1",
        port: gatewayPort,
        localAddress: from,
        method: "POST",
        path: `/medmesh.identity.v1.IdentityService/${method}`,
        headers: { ...headers, "content-type": "application/json", "content-length": Buffer.byteLength(payload) },
        agent: false,
      },
      (res) => {
        let text = "";
        res.on("data", (d) => (text += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

const wrongLogin = (from: string, account: string, headers: Record<string, string> = {}) =>
  viaGateway(from, "Login", { login: account, password: "a wrong password" }, headers);

const tooManyFromHere = /^too many auth calls; try again in \d+ s$/;
const tooManyForAccount = /^too many auth calls for this account; try again in \d+ s$/;

describe("through the gateway, identity limits each client by its own address", () => {
  it("ten failed sign-ins from one client do not lock anyone else out of Register and Login", async () => {
    for (let i = 0; i < 10; i++) expect((await wrongLogin("127.0.0.2", `guess${i}@example.org`)).status).toBe(401);
    const refused = await wrongLogin("127.0.0.2", "guess10@example.org");
    expect(refused.status).toBe(429);
    expect(refused.body.message).toMatch(tooManyFromHere);

    // Another client signs up and in as if nothing had happened.
    const registered = await viaGateway("127.0.0.3", "Register", {
      email: "bystander@example.org",
      username: "bystander",
      password: "a long enough password",
      firstName: "By",
      lastName: "Stander",
    });
    expect(registered.status, JSON.stringify(registered.body)).toBe(200);
    const signedIn = await viaGateway("127.0.0.3", "Login", {
      login: "bystander",
      password: "a long enough password",
    });
    expect(signedIn.status, JSON.stringify(signedIn.body)).toBe(200);
    expect(signedIn.body).toHaveProperty("tokens");
  });

  it("the attacked account is still locked for everyone, from any address", async () => {
    for (let i = 0; i < 10; i++) {
      expect((await wrongLogin(`127.0.0.${100 + i}`, "victim@example.org")).status).toBe(401);
    }
    for (const from of ["127.0.0.120", "127.0.0.121"]) {
      const refused = await wrongLogin(from, "victim@example.org");
      expect(refused.status).toBe(429);
      expect(refused.body.message).toMatch(tooManyForAccount);
    }
    // The addresses themselves were not used up: another account from one of them is only wrong.
    expect((await wrongLogin("127.0.0.100", "someone@example.org")).status).toBe(401);
  });

  it("behind a trusted proxy, the client is the address the proxy names in X-Forwarded-For", async () => {
    const xff = (client: string) => ({ "x-forwarded-for": client });
    for (let i = 0; i < 10; i++) {
      expect((await wrongLogin(TRUSTED_PROXY, `proxied${i}@example.org`, xff("198.51.100.7"))).status).toBe(401);
    }
    expect((await wrongLogin(TRUSTED_PROXY, "proxied10@example.org", xff("198.51.100.7"))).body.message).toMatch(
      tooManyFromHere,
    );
    // Another client behind the same proxy, and the proxy's own address, are unaffected.
    expect((await wrongLogin(TRUSTED_PROXY, "proxied10@example.org", xff("198.51.100.8"))).status).toBe(401);
    expect((await wrongLogin(TRUSTED_PROXY, "proxied11@example.org")).status).toBe(401);
  });

  it("X-Forwarded-For from a client that is no trusted proxy buys it nothing", async () => {
    for (let i = 0; i < 10; i++) {
      const spoofed = { "x-forwarded-for": `203.0.113.${i}` };
      expect((await wrongLogin("127.0.0.4", `spoof${i}@example.org`, spoofed)).status).toBe(401);
    }
    const refused = await wrongLogin("127.0.0.4", "spoof10@example.org", { "x-forwarded-for": "203.0.113.99" });
    expect(refused.body.message).toMatch(tooManyFromHere);
  });

  it("a client's own copy of the mesh-only header, even a genuinely signed one, never speaks for it", async () => {
    // The worst case: a statement made with the real secret, for this very method, just now.
    const claim = (i: number) => ({
      [CLIENT_ADDRESS_HEADER]: vouchForAddress(secrets, `192.0.2.${i}`, LOGIN, Date.now()),
    });
    for (let i = 0; i < 10; i++) {
      expect((await wrongLogin("127.0.0.5", `claim${i}@example.org`, claim(i))).status).toBe(401);
    }
    // Had any of them reached identity as authentic, each would have had a bucket of its own.
    const refused = await wrongLogin("127.0.0.5", "claim10@example.org", claim(10));
    expect(refused.status).toBe(429);
    expect(refused.body.message).toMatch(tooManyFromHere);
  });
});

// ---------------------------------------------------------------------------------------------

interface GrpcAnswer {
  code: number;
  message: string;
}

/** A Login straight to identity over gRPC (hand-made frames), from a given loopback address. */
function directLogin(from: string, account: string, headers: Record<string, string> = {}): Promise<GrpcAnswer> {
  const body = toBinary(LoginRequestSchema, create(LoginRequestSchema, { login: account, password: "a wrong one" }));
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length, 1);
  frame.set(body, 5);
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${identityPort}`, {
      createConnection: () => net.connect({ host: "127.0.0.1", port: identityPort, localAddress: from }),
    });
    session.on("error", reject);
    const req = session.request({
      ":method": "POST",
      ":path": LOGIN,
      "content-type": "application/grpc",
      te: "trailers",
      ...headers,
    });
    let status: { code: number; message: string } | undefined;
    const read = (h: http2.IncomingHttpHeaders) => {
      if (h["grpc-status"] !== undefined)
        status = { code: Number(h["grpc-status"]), message: decodeURIComponent(String(h["grpc-message"] ?? "")) };
    };
    req.on("response", read);
    req.on("trailers", read);
    req.on("data", () => undefined);
    req.on("error", reject);
    req.on("close", () => {
      session.close();
      if (status) resolve(status);
      else reject(new Error("no gRPC status"));
    });
    req.end(frame);
  });
}

const UNAUTHENTICATED = 16;
const RESOURCE_EXHAUSTED = 8;

describe("straight to identity, a statement is believed only when it is genuine", () => {
  const statement = (address: string, opts: { path?: string; at?: number; secret?: string } = {}) => ({
    [CLIENT_ADDRESS_HEADER]: vouchForAddress(
      parseEdgeSecrets(opts.secret ?? SECRET),
      address,
      opts.path ?? LOGIN,
      opts.at ?? Date.now(),
    ),
  });

  it("a genuine statement is believed (the control: verification works at all)", async () => {
    for (let i = 0; i < 12; i++) {
      const answer = await directLogin("127.0.0.30", `trusted${i}@example.org`, statement(`198.18.0.${i}`));
      expect(answer.code, answer.message).toBe(UNAUTHENTICATED);
    }
  });

  it.each([
    ["signed with another secret", "127.0.0.31", (i: number) => statement(`198.18.1.${i}`, { secret: OTHER_SECRET })],
    ["expired", "127.0.0.32", (i: number) => statement(`198.18.2.${i}`, { at: Date.now() - 5 * 60_000 })],
    ["made for another method", "127.0.0.33", (i: number) => statement(`198.18.3.${i}`, { path: REGISTER })],
    ["garbage", "127.0.0.34", (i: number) => ({ [CLIENT_ADDRESS_HEADER]: `198.18.4.${i}` })],
  ])("a statement %s is ignored: the caller is limited by its real peer address", async (_what, from, forged) => {
    for (let i = 0; i < 10; i++) {
      const answer = await directLogin(from, `forged${from}-${i}@example.org`, forged(i));
      expect(answer.code, answer.message).toBe(UNAUTHENTICATED);
    }
    const refused = await directLogin(from, `forged${from}-10@example.org`, forged(10));
    expect(refused.code).toBe(RESOURCE_EXHAUSTED);
    expect(refused.message).toMatch(tooManyFromHere);
  });
});
