import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IdentityService } from "../gen/medmesh/identity/v1/identity_pb.js";
import { startGateway } from "../gateway/main.js";
import { testEnv } from "./support/backends.js";
import { startTestIdentity, type TestIdentity } from "./support/identity.js";

let identity: TestIdentity;
let gatewayPort: number;
let stopGateway: () => Promise<void>;

beforeAll(async () => {
  identity = await startTestIdentity();
  const gw = await startGateway(
    { ...testEnv, IDENTITY_TARGET: identity.target, RATE_LIMITS: "read=1000:1000,auth=3:0.001" },
    { services: [IdentityService] },
  );
  gatewayPort = gw.port;
  stopGateway = gw.stop;
});

afterAll(async () => {
  await stopGateway?.();
  await identity?.stop();
});

/** A sign-in attempt from a given loopback address, as if from another machine. */
function login(from: string, account: string): Promise<{ status: number; body: { code?: string; message?: string } }> {
  const payload = JSON.stringify({ login: account, password: "a wrong password" });
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: "127.0.0.1",
        port: gatewayPort,
        localAddress: from,
        method: "POST",
        path: "/medmesh.identity.v1.IdentityService/Login",
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload) },
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

describe("credential calls are limited per address and per account", () => {
  it("guessing one account from many addresses runs out of the account's bucket", async () => {
    for (const from of ["127.0.0.2", "127.0.0.3", "127.0.0.4"]) {
      expect((await login(from, "victim@example.org")).status).toBe(401);
    }
    const refused = await login("127.0.0.5", "victim@example.org");
    expect(refused.status).toBe(429);
    expect(refused.body.message).toMatch(/^too many auth calls for this account; try again in \d+ s$/);
    // Another account from yet another address is unaffected.
    expect((await login("127.0.0.6", "someone-else@example.org")).status).toBe(401);
  });

  it("one address guessing many accounts runs out of the address's bucket", async () => {
    for (const account of ["a@example.org", "b@example.org", "c@example.org"]) {
      expect((await login("127.0.0.7", account)).status).toBe(401);
    }
    const refused = await login("127.0.0.7", "d@example.org");
    expect(refused.status).toBe(429);
    expect(refused.body.message).toMatch(/^too many auth calls; try again in \d+ s$/);
  });

  it("the account key ignores case, so changing it does not buy more guesses", async () => {
    for (const [from, account] of [
      ["127.0.0.8", "Case@Example.org"],
      ["127.0.0.9", "case@example.org"],
      ["127.0.0.10", "CASE@EXAMPLE.ORG"],
    ] as const) {
      expect((await login(from, account)).status).toBe(401);
    }
    expect((await login("127.0.0.11", "cAsE@example.org")).status).toBe(429);
  });
});
