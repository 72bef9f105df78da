import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Browser } from "playwright-core";
import { startBroker } from "../deploy/embedded/kafka/index.js";
import { DocumentService } from "../gen/medmesh/documents/v1/documents_pb.js";
import { IdentityService } from "../gen/medmesh/identity/v1/identity_pb.js";
import { NotificationService } from "../gen/medmesh/notifications/v1/notifications_pb.js";
import { SearchService } from "../gen/medmesh/search/v1/search_pb.js";
import { startGateway } from "../gateway/main.js";
import { startDocuments } from "../services/documents/main.js";
import { startNotifications } from "../services/notifications/main.js";
import { startSearch } from "../services/search/main.js";
import { backends, testEnv } from "./support/backends.js";
import {
  bundlePageScript,
  chromiumPath,
  haveChromium,
  launchChromium,
  openTestPage,
  servePage,
  type TestPage,
} from "./support/browser.js";
import type { Call, Failure, Wire } from "./support/browser-page.js";
import { eventually } from "./support/eventually.js";
import { startTestIdentity } from "./support/identity.js";
import { startMailbox } from "./support/mailbox.js";

// The mesh as a web page uses it: connect-web clients running INSIDE a headless Chromium, on a
// page served from an origin of its own, calling the gateway with the browser's fetch, CORS
// preflights, streams and AbortController. Nothing here is a client we wrote.

if (!haveChromium) {
  // CI installs Chromium (.ci/run); there a missing browser is a failure, not a reason to skip.
  if (process.env.CI) throw new Error(`${chromiumPath} is missing: .ci/run installs it for this test`);
  console.warn(`browser.test.ts skipped: no Chromium at ${chromiumPath} (apt-get install chromium)`);
}

/** The request, header and idle timeouts of the second gateway: a quiet stream outlives them. */
const SHORT_TIMEOUT_MS = 1_000;
const RPC_LIMITS = "read=100000:100000,write=100000:100000,auth=100000:100000";

describe.skipIf(!haveChromium)("connect-web in Chromium against the gateway", () => {
  const suffix = randomBytes(4).toString("hex");
  const keys = {
    notifications: `mmk_${randomBytes(32).toString("base64url")}`,
    search: `mmk_${randomBytes(32).toString("base64url")}`,
  };
  const stops: Array<() => Promise<void>> = [];
  let browser: Browser;
  let gateway: string;
  /** The page on an allowed origin, and the same page on an origin the gateway does not list. */
  let allowed: TestPage;
  let refused: TestPage;
  let adminToken: string;
  let hastyGateway: string;

  const as = (wire: Wire, token?: string): Call => ({ gateway, wire, token });
  const admin = (wire: Wire): Call => as(wire, adminToken);

  /** The service-side count of a method's finished calls, from the registry the in-process services share. */
  async function finished(component: string, method: string, code?: string): Promise<number> {
    const text = await (await fetch(`${gateway}/metrics`)).text();
    let n = 0;
    for (const line of text.split("\n")) {
      const m = /^medmesh_rpc_requests_total\{(.*)\} (\d+)$/.exec(line);
      if (!m) continue;
      const labels = m[1]!;
      if (!labels.includes(`component="${component}"`) || !labels.includes(`${method}"`)) continue;
      if (code && !labels.includes(`code="${code}"`)) continue;
      n += Number(m[2]);
    }
    return n;
  }

  function expectFailure(result: unknown, code: string, message?: RegExp): Failure {
    expect(result).toMatchObject({ failed: true, code });
    const f = result as Failure;
    if (message) expect(f.message).toMatch(message);
    return f;
  }

  beforeAll(async () => {
    const broker = await startBroker({ port: 0, dataDir: null, logLevel: "silent" });
    stops.unshift(() => broker.stop());
    const mailbox = await startMailbox();
    stops.unshift(() => mailbox.stop());
    const identity = await startTestIdentity({
      KAFKA_BROKERS: broker.address,
      IDENTITY_BOOTSTRAP_API_KEYS: `notifications=${keys.notifications},search=${keys.search}`,
    });
    stops.unshift(() => identity.stop());
    // Real PostgreSQL and Redis when the run has them (CI), the embedded ones otherwise.
    const backend = backends().at(-1)!;
    const own = backend.env.DATABASE_URL
      ? { DATABASE_URL: backend.env.DATABASE_URL }
      : { MEDMESH_DATA_DIR: "memory://" };
    const redis = process.env.REDIS_URL ? { REDIS_URL: process.env.REDIS_URL } : {};
    const documents = await startDocuments({
      ...testEnv,
      ...backend.env,
      IDENTITY_TARGET: identity.target,
      KAFKA_BROKERS: broker.address,
      BLOB_DIR: mkdtempSync(path.join(os.tmpdir(), "medmesh-browser-test-")),
      // One watch per user: a second one is refused while the first holds its slot.
      WATCH_MAX_PER_USER: "1",
      WATCH_POLL_MS: "200",
    });
    stops.unshift(documents.stop);
    const documentsTarget = `127.0.0.1:${documents.port}`;
    const notifications = await startNotifications({
      ...testEnv,
      ...own,
      ...redis,
      NOTIFICATIONS_DB_SCHEMA: `notifications_b${suffix}`,
      NOTIFICATIONS_PORT: "0",
      NOTIFICATIONS_GROUP_ID: `notifications-b${suffix}`,
      KAFKA_BROKERS: broker.address,
      DOCUMENTS_TARGET: documentsTarget,
      IDENTITY_TARGET: identity.target,
      NOTIFICATIONS_API_KEY: keys.notifications,
      SMTP_URL: mailbox.url,
      NOTIFICATIONS_POLL_MS: "100",
    });
    stops.unshift(notifications.stop);
    const search = await startSearch({
      ...testEnv,
      ...own,
      ...redis,
      SEARCH_DB_SCHEMA: `search_b${suffix}`,
      SEARCH_PORT: "0",
      KAFKA_BROKERS: broker.address,
      DOCUMENTS_TARGET: documentsTarget,
      IDENTITY_TARGET: identity.target,
      SEARCH_API_KEY: keys.search,
    });
    stops.unshift(search.stop);

    const script = await bundlePageScript();
    const pages = await servePage(script);
    stops.unshift(pages.close);
    const allowedOrigin = `http://127.0.0.1:${pages.port}`;
    const gatewayEnv = {
      ...testEnv,
      ...redis,
      IDENTITY_TARGET: identity.target,
      DOCUMENTS_TARGET: documentsTarget,
      NOTIFICATIONS_TARGET: `127.0.0.1:${notifications.port}`,
      SEARCH_TARGET: `127.0.0.1:${search.port}`,
      CORS_ALLOWED_ORIGINS: allowedOrigin,
      RATE_LIMITS: RPC_LIMITS,
    };
    const exposed = { services: [IdentityService, DocumentService, NotificationService, SearchService] };
    const gw = await startGateway(gatewayEnv, exposed);
    stops.unshift(gw.stop);
    gateway = `http://127.0.0.1:${gw.port}`;
    // A second gateway whose connection timeouts are short, for streams that outlast them.
    const hasty = await startGateway(
      {
        ...gatewayEnv,
        GATEWAY_HEADERS_TIMEOUT_MS: String(SHORT_TIMEOUT_MS),
        GATEWAY_REQUEST_TIMEOUT_MS: String(SHORT_TIMEOUT_MS),
        GATEWAY_IDLE_TIMEOUT_MS: String(SHORT_TIMEOUT_MS),
      },
      exposed,
    );
    stops.unshift(hasty.stop);
    hastyGateway = `http://127.0.0.1:${hasty.port}`;

    browser = await launchChromium();
    stops.unshift(() => browser.close());
    allowed = await openTestPage(browser, allowedOrigin);
    // The same server under another name is another origin, one the gateway was not told about.
    refused = await openTestPage(browser, `http://localhost:${pages.port}`);

    // The bootstrap address makes the first account to register with it an admin.
    const signedUp = await allowed.run("signUp", as("connect-json"), {
      email: "admin@medmesh.test",
      username: "admin",
    });
    if ("failed" in signedUp) throw new Error(`the admin could not sign up from the page: ${JSON.stringify(signedUp)}`);
    adminToken = signedUp.token;
  }, 120_000);

  afterAll(async () => {
    for (const stop of stops) await stop();
  });

  describe.each(["connect-json", "connect-binary", "grpc-web"] as const)("%s unary", (wire) => {
    it("signs up and in, creates a document and reads it back", async () => {
      const who = `u${wire.replace(/-/g, "")}${suffix}`;
      const user = await allowed.run("signUp", as(wire), { email: `${who}@medmesh.test`, username: who });
      if ("failed" in user) throw new Error(JSON.stringify(user));
      expect(await allowed.run("getMe", as(wire, user.token))).toEqual({ subject: user.userId });

      const title = `Created from a browser over ${wire} ${suffix}`;
      const created = await allowed.run("createDocument", admin(wire), title);
      if ("failed" in created) throw new Error(JSON.stringify(created));
      expect(await allowed.run("getDocument", admin(wire), created.id)).toEqual({ id: created.id, title });

      const sent = allowed.requests.filter((r) =>
        r.url.endsWith("/medmesh.documents.v1.DocumentService/CreateDocument"),
      );
      const expected = {
        "connect-json": "application/json",
        "connect-binary": "application/proto",
        "grpc-web": "application/grpc-web+proto",
      }[wire];
      expect(sent.some((r) => r.method === "POST" && r.contentType === expected)).toBe(true);
    });

    it("an invalid argument arrives as its code with the service's sentence", async () => {
      const result = await allowed.run("createDocument", admin(wire), "");
      // gRPC-web carries the details in a header the page may read only if the gateway exposes it.
      expect(expectFailure(result, "invalid_argument", /title/).details).toContain("google.rpc.BadRequest");
    });

    it("no token is unauthenticated, with a sentence", async () => {
      expectFailure(await allowed.run("getMe", as(wire)), "unauthenticated", /\w+ \w+/);
      expectFailure(await allowed.run("createDocument", as(wire), "anonymous"), "unauthenticated", /\w+ \w+/);
    });
  });

  describe("Connect GET for NO_SIDE_EFFECTS methods", () => {
    it("GetDocument and Search go out as GETs, writes stay POSTs", async () => {
      const title = `Read with GET ${suffix}`;
      const created = await allowed.run("createDocument", admin("connect-get"), title);
      if ("failed" in created) throw new Error(JSON.stringify(created));
      expect(await allowed.run("getDocument", admin("connect-get"), created.id)).toEqual({ id: created.id, title });
      const found = await allowed.run("search", admin("connect-get"), `browser ${suffix}`);
      expect(found).toMatchObject({ totalCount: expect.any(Number) });

      const methodOf = (rpc: string) =>
        allowed.requests
          .filter((r) => new URL(r.url).pathname.endsWith(rpc) && r.method !== "OPTIONS")
          .map((r) => r.method);
      expect(methodOf(".DocumentService/GetDocument")).toContain("GET");
      expect(methodOf(".SearchService/Search")).toEqual(["GET"]);
      expect(methodOf(".DocumentService/CreateDocument")).not.toContain("GET");
    });

    it("a GET's invalid argument and missing token answer as a POST's do", async () => {
      expectFailure(await allowed.run("search", admin("connect-get"), ""), "invalid_argument", /query/);
      expectFailure(await allowed.run("search", as("connect-get"), "anything"), "unauthenticated");
    });
  });

  /**
   * Waits until notifications knows the new account: an announcement goes to the accounts known
   * when it is sent, and the account is learned from user.events, which may still be on its way.
   * The welcome notification is written in the same transaction that records the account.
   */
  async function untilKnownToNotifications(wire: Wire, token: string, name: string) {
    await allowed.run("openStream", as(wire, token), name, { subscribe: true }, 60_000);
    await eventually("the welcome notification (the account is known)", async () =>
      (await allowed.run("streamState", name))?.messages.includes("Welcome to medmesh") ? true : undefined,
    );
    await allowed.run("abortStream", name);
  }

  describe.each(["connect-json", "connect-binary", "grpc-web"] as const)("%s server streaming", (wire) => {
    it("Subscribe receives an announcement made while it is open", async () => {
      const who = `s${wire.replace(/-/g, "")}${suffix}`;
      const user = await allowed.run("signUp", as(wire), { email: `${who}@medmesh.test`, username: who });
      if ("failed" in user) throw new Error(JSON.stringify(user));
      const before = `Before the stream ${wire} ${suffix}`;
      const during = `While the stream is open ${wire} ${suffix}`;
      await untilKnownToNotifications(wire, user.token, `welcome-${wire}`);
      expect(await allowed.run("announce", admin(wire), before)).toMatchObject({ announcementId: expect.any(String) });
      const name = `subscribe-${wire}`;
      await allowed.run("openStream", as(wire, user.token), name, { subscribe: true }, 60_000);
      // The first announcement arrives as unread on opening: from then on, the stream is live.
      await eventually("the earlier announcement on the stream", async () =>
        (await allowed.run("streamState", name))?.messages.includes(before) ? true : undefined,
      );
      await allowed.run("announce", admin(wire), during);
      const state = await eventually("the new announcement on the open stream", async () => {
        const s = await allowed.run("streamState", name);
        return s?.messages.includes(during) ? s : undefined;
      });
      expect(state.ended).toBeUndefined();
      await allowed.run("abortStream", name);
    });

    it("aborting a WatchDocument from the page ends it at the service and frees the watch slot", async () => {
      const created = await allowed.run("createDocument", admin(wire), `Watched over ${wire} ${suffix}`);
      if ("failed" in created) throw new Error(JSON.stringify(created));
      const cancelledBefore = await finished("documents", "WatchDocument", "Canceled");
      const name = `watch-${wire}`;
      await allowed.run("openStream", admin(wire), name, { watch: created.id }, 60_000);
      await eventually("the watch's first status", async () =>
        (await allowed.run("streamState", name))?.messages.length ? true : undefined,
      );
      // The admin's only watch slot is taken (WATCH_MAX_PER_USER=1): the service holds the stream.
      await allowed.run("openStream", admin(wire), `${name}-second`, { watch: created.id });
      const second = await eventually(
        "the second watch refused",
        async () => (await allowed.run("streamState", `${name}-second`))?.ended,
      );
      expectFailure(second, "resource_exhausted", /already watching/);

      await allowed.run("abortStream", name);
      expect(
        await eventually("the page's stream ended", async () => (await allowed.run("streamState", name))?.ended),
      ).toMatchObject({
        code: "canceled",
      });
      await eventually("the service to see the watch cancelled", async () =>
        (await finished("documents", "WatchDocument", "Canceled")) > cancelledBefore ? true : undefined,
      );
      // The slot is free again: a new watch is taken, and given back the same way.
      await allowed.run("openStream", admin(wire), `${name}-third`, { watch: created.id });
      await eventually("the third watch's first status", async () =>
        (await allowed.run("streamState", `${name}-third`))?.messages.length ? true : undefined,
      );
      expect((await allowed.run("streamState", `${name}-third`))?.ended).toBeUndefined();
      await allowed.run("abortStream", `${name}-third`);
      await eventually("the third watch's slot back", async () =>
        (await finished("documents", "WatchDocument", "Canceled")) > cancelledBefore + 1 ? true : undefined,
      );
    });

    it("a timeoutMs that expires ends the stream with deadline_exceeded", async () => {
      const created = await allowed.run("createDocument", admin(wire), `Watched briefly over ${wire} ${suffix}`);
      if ("failed" in created) throw new Error(JSON.stringify(created));
      const name = `deadline-${wire}`;
      await allowed.run("openStream", admin(wire), name, { watch: created.id }, 1_500);
      const state = await eventually("the stream to end", async () => {
        const s = await allowed.run("streamState", name);
        return s?.ended ? s : undefined;
      });
      expect(state.messages.length).toBeGreaterThan(0);
      expectFailure(state.ended, "deadline_exceeded", /\w+ \w+/);
      // The expired watch gave its slot back.
      await eventually("a new watch after the deadline", async () => {
        await allowed.run("openStream", admin(wire), `${name}-after`, { watch: created.id }, 5_000);
        const s = await eventually("the new watch to answer", async () => {
          const st = await allowed.run("streamState", `${name}-after`);
          return st?.messages.length || st?.ended ? st : undefined;
        });
        await allowed.run("abortStream", `${name}-after`);
        return s.messages.length ? true : undefined;
      });
    });
  });

  describe.each(["connect-json", "grpc-web"] as const)("%s: a quiet stream", (wire) => {
    it("stays open past the gateway's request, header and idle timeouts, and still delivers", async () => {
      const who = `q${wire.replace(/-/g, "")}${suffix}`;
      const user = await allowed.run("signUp", as(wire), { email: `${who}@medmesh.test`, username: who });
      if ("failed" in user) throw new Error(JSON.stringify(user));
      const before = `Before a quiet stream ${wire} ${suffix}`;
      const after = `After the quiet ${wire} ${suffix}`;
      await untilKnownToNotifications(wire, user.token, `welcome-quiet-${wire}`);
      await allowed.run("announce", admin(wire), before);
      const name = `quiet-${wire}`;
      await allowed.run(
        "openStream",
        { gateway: hastyGateway, wire, token: user.token },
        name,
        { subscribe: true },
        60_000,
      );
      await eventually("the earlier announcement on the stream", async () =>
        (await allowed.run("streamState", name))?.messages.includes(before) ? true : undefined,
      );
      await new Promise((r) => setTimeout(r, 3 * SHORT_TIMEOUT_MS));
      expect((await allowed.run("streamState", name))?.ended).toBeUndefined();
      await allowed.run("announce", admin(wire), after);
      await eventually("the announcement after the quiet", async () =>
        (await allowed.run("streamState", name))?.messages.includes(after) ? true : undefined,
      );
      await allowed.run("abortStream", name);
    });
  });

  describe("an origin the gateway does not list", () => {
    it("the browser refuses every call and nothing reaches a service", async () => {
      const createsBefore = await finished("documents", "CreateDocument");
      const readsBefore = await finished("documents", "GetDocument");
      const title = `From a refused origin ${suffix}`;
      for (const wire of ["connect-json", "connect-binary", "connect-get", "grpc-web"] as const) {
        const result = await refused.run("createDocument", admin(wire), title);
        const f = expectFailure(result, expect.any(String) as never);
        expect(f.cause ?? f.message).toMatch(/fetch/i);
        expectFailure(
          await refused.run("getDocument", admin(wire), "00000000-0000-4000-8000-000000000000"),
          expect.any(String) as never,
        );
      }
      // Without a token a Connect GET is a "simple" request: the browser sends it with no preflight,
      // and only hides the answer from the page. The gateway must not pass it on to identity.
      const jwksBefore = await finished("gateway", "IdentityService/GetJwks");
      expect(await refused.run("getJwks", as("connect-get"))).toMatchObject({ failed: true });
      expect(await allowed.run("getJwks", as("connect-get"))).toMatchObject({ keys: expect.any(Number) });
      expect(await finished("gateway", "IdentityService/GetJwks")).toBe(jwksBefore + 1);
      expect(refused.consoleErrors.some((e) => /CORS/.test(e))).toBe(true);
      expect(await finished("documents", "CreateDocument")).toBe(createsBefore);
      expect(await finished("documents", "GetDocument")).toBe(readsBefore);
    });
  });

  describe("resumable upload through Connect unary calls", () => {
    it.each(["connect-json", "connect-binary"] as const)(
      "%s: start, a full 4 MiB part and a short one, complete",
      async (wire) => {
        const text = `Notes uploaded from a browser over ${wire} ${suffix}\n\nAbstract\nAspirin and the heart.\n`;
        const size = 4 * 1024 * 1024 + 1000;
        const done = await allowed.run("resumableUpload", admin(wire), `Uploaded over ${wire} ${suffix}`, text, size);
        if ("failed" in done) throw new Error(JSON.stringify(done));
        expect(done).toMatchObject({ version: 1, parts: 2, sizeBytes: size, stored: done.sent });
        expect(done.documentId).toMatch(/^[0-9a-f-]{36}$/);
      },
    );
  });
});
