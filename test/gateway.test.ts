import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { InMemorySpanExporter } from "@opentelemetry/sdk-trace-base";
import { DocumentService, DocumentType } from "../gen/medmesh/documents/v1/documents_pb.js";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import { startTelemetry } from "../platform/telemetry/sdk.js";
import { startDocuments } from "../services/documents/main.js";
import { startGateway } from "../gateway/main.js";
import { testEnv } from "./support/backends.js";
import { startTestIdentity, type TestIdentity } from "./support/identity.js";
import type { Interceptor } from "@connectrpc/connect";

const spans = new InMemorySpanExporter();
startTelemetry({ serviceName: "test", exporter: spans, logLevel: "error" });

const origin = "http://console.example";
// This file tests the gateway in front of one service; identity has its own tests.
const documentsOnly = { services: [DocumentService] };
let gatewayUrl: string;
let documentsPort: number;
let identity: TestIdentity;
/** The doctor's authorization header, sent by every call below unless a test says otherwise. */
let auth: { authorization: string };
const withAuth: Interceptor = (next) => (req) => {
  req.header.set("authorization", auth.authorization);
  return next(req);
};
let stops: Array<() => Promise<void>> = [];

async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

beforeAll(async () => {
  identity = await startTestIdentity();
  auth = await identity.bearer("doctor");
  const docs = await startDocuments({ ...testEnv, MEDMESH_DATA_DIR: "memory://", IDENTITY_TARGET: identity.target });
  documentsPort = docs.port;
  const gw = await startGateway(
    {
      ...testEnv,
      IDENTITY_TARGET: identity.target,
      DOCUMENTS_TARGET: `127.0.0.1:${docs.port}`,
      CORS_ALLOWED_ORIGINS: origin,
      GATEWAY_MAX_BODY_BYTES: "64KiB",
    },
    documentsOnly,
  );
  gatewayUrl = `http://127.0.0.1:${gw.port}`;
  stops = [gw.stop, docs.stop, () => identity.stop()];
});

afterAll(async () => {
  for (const stop of stops) await stop();
});

const rpc = (method: string) => `${gatewayUrl}/medmesh.documents.v1.DocumentService/${method}`;

function postJson(method: string, body: string, headers: Record<string, string> = {}) {
  return fetch(rpc(method), {
    method: "POST",
    headers: { "content-type": "application/json", ...auth, ...headers },
    body,
  });
}

async function createOne(title = "Statins after 75"): Promise<string> {
  const res = await postJson(
    "CreateDocument",
    JSON.stringify({ document: { title, documentType: "DOCUMENT_TYPE_REVIEW" } }),
  );
  expect(res.status).toBe(200);
  return ((await res.json()) as { document: { id: string } }).document.id;
}

describe("Connect JSON with plain fetch", () => {
  it("creates with POST and reads with GET (NO_SIDE_EFFECTS methods are cacheable GETs)", async () => {
    const id = await createOne();
    const message = encodeURIComponent(JSON.stringify({ id }));
    const res = await fetch(`${rpc("GetDocument")}?connect=v1&encoding=json&message=${message}`, { headers: auth });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { document: { id: string } }).document.id).toBe(id);
  });

  it("keeps the upstream status and its field-level details", async () => {
    const res = await postJson(
      "CreateDocument",
      JSON.stringify({ document: { title: "", documentType: "DOCUMENT_TYPE_REVIEW", doi: "nope" } }),
    );
    expect(res.status).toBe(400);
    const body = (await res.json()) as { code: string; message: string; details: Array<{ type: string }> };
    expect(body.code).toBe("invalid_argument");
    expect(body.message).toMatch(/title is required/);
    expect(body.details[0]!.type).toBe("google.rpc.BadRequest");
  });

  it("maps not_found to HTTP 404 with the service's sentence", async () => {
    const res = await postJson("GetDocument", JSON.stringify({ id: "00000000-0000-4000-8000-000000000000" }));
    expect(res.status).toBe(404);
    expect(await res.json()).toEqual({
      code: "not_found",
      message: "document 00000000-0000-4000-8000-000000000000 does not exist",
    });
  });
});

describe.each([
  [
    "Connect binary over HTTP/1.1",
    () =>
      createConnectTransport({
        baseUrl: gatewayUrl,
        httpVersion: "1.1",
        useBinaryFormat: true,
        interceptors: [withAuth],
      }),
  ],
  [
    "gRPC-web over HTTP/1.1",
    () => createGrpcWebTransport({ baseUrl: gatewayUrl, httpVersion: "1.1", interceptors: [withAuth] }),
  ],
  ["gRPC over h2c", () => createGrpcTransport({ baseUrl: gatewayUrl, interceptors: [withAuth] })],
] as Array<[string, () => Transport]>)("connect-node client, %s", (_name, transport) => {
  it("creates, gets, lists and sees upstream errors with details", async () => {
    const client = createClient(DocumentService, transport());
    const { document } = await client.createDocument({
      document: { title: "Through the gateway", documentType: DocumentType.GUIDELINE },
    });
    const got = await client.getDocument({ id: document!.id });
    expect(got.document!.title).toBe("Through the gateway");
    const list = await client.listDocuments({ pageSize: 100 });
    expect(list.documents.some((d) => d.id === document!.id)).toBe(true);
    const err = await client
      .createDocument({ document: { title: "x".repeat(501), documentType: DocumentType.GUIDELINE } })
      .catch((e) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
    expect((err as ConnectError).findDetails(BadRequestSchema)[0]!.fieldViolations[0]!.field).toBe("document.title");
  });
});

describe("the access policy at the edge", () => {
  it("no token -> 401 unauthenticated; a forged one too", async () => {
    const anonymous = await fetch(rpc("ListDocuments"), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    expect(anonymous.status).toBe(401);
    expect(await anonymous.json()).toEqual({ code: "unauthenticated", message: "sign in to call this method" });
    const forged = await postJson("ListDocuments", "{}", { authorization: "Bearer e30.e30.AAAA" });
    expect(forged.status).toBe(401);
    expect(((await forged.json()) as { message: string }).message).toMatch(/^invalid access token: /);
  });

  it("a role the contract does not list -> 403 permission_denied, before the service is called", async () => {
    const res = await postJson(
      "CreateDocument",
      JSON.stringify({ document: { title: "t", documentType: "DOCUMENT_TYPE_REVIEW" } }),
      await identity.bearer("student"),
    );
    expect(res.status).toBe(403);
    expect(((await res.json()) as { message: string }).message).toBe("the student role may not call CreateDocument");
  });
});

describe("bad requests at the edge get a clear status and the gateway keeps serving", () => {
  it("unknown field name -> invalid_argument naming it", async () => {
    const res = await postJson(
      "CreateDocument",
      JSON.stringify({ document: { titel: "t", documentType: "DOCUMENT_TYPE_REVIEW" } }),
    );
    expect(res.status).toBe(400);
    expect(((await res.json()) as { message: string }).message).toMatch(/titel/);
  });

  it("malformed JSON -> invalid_argument", async () => {
    const res = await postJson("CreateDocument", '{"document": {');
    expect(res.status).toBe(400);
    expect(((await res.json()) as { code: string }).code).toBe("invalid_argument");
  });

  it("unknown enum name -> invalid_argument", async () => {
    const res = await postJson(
      "CreateDocument",
      JSON.stringify({ document: { title: "t", documentType: "DOCUMENT_TYPE_POEM" } }),
    );
    expect(res.status).toBe(400);
    expect(((await res.json()) as { message: string }).message).toMatch(/DOCUMENT_TYPE_POEM/);
  });

  it("wrong content-type -> 415", async () => {
    const res = await fetch(rpc("CreateDocument"), {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: "{}",
    });
    expect(res.status).toBe(415);
  });

  it("unknown service and unknown method -> 404", async () => {
    const a = await fetch(`${gatewayUrl}/medmesh.nothing.v1.NoService/Call`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    expect(a.status).toBe(404);
    const b = await postJson("Frobnicate", "{}");
    expect(b.status).toBe(404);
  });

  it("GET on a method with side effects -> 405", async () => {
    const res = await fetch(`${rpc("CreateDocument")}?connect=v1&encoding=json&message=%7B%7D`);
    expect(res.status).toBe(405);
  });

  it("body over the configured limit -> resource_exhausted", async () => {
    const res = await postJson(
      "CreateDocument",
      JSON.stringify({ document: { title: "x".repeat(100 * 1024), documentType: "DOCUMENT_TYPE_REVIEW" } }),
    );
    const body = (await res.json()) as { code: string; message: string };
    expect(body.code).toBe("resource_exhausted");
    expect(body.message).toMatch(/larger than|exceeds|max/i);
  });

  it("is still serving", async () => {
    expect(await createOne("after the bad requests")).toMatch(/^[0-9a-f-]{36}$/);
  });
});

describe("CORS allow-list", () => {
  it("answers a preflight from an allowed origin", async () => {
    const res = await fetch(rpc("CreateDocument"), {
      method: "OPTIONS",
      headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "content-type" },
    });
    expect(res.status).toBe(204);
    expect(res.headers.get("access-control-allow-origin")).toBe(origin);
    expect(res.headers.get("access-control-allow-headers")).toMatch(/Content-Type/i);
  });

  it("refuses a preflight from any other origin, and its requests too, before any service sees them", async () => {
    const pre = await fetch(rpc("CreateDocument"), {
      method: "OPTIONS",
      headers: { origin: "http://evil.example", "access-control-request-method": "POST" },
    });
    expect(pre.status).toBe(403);
    // A browser sends a Connect GET with no token and no timeout without a preflight.
    const get = await fetch(`${rpc("GetDocument")}?connect=v1&encoding=json&message=${encodeURIComponent("{}")}`, {
      headers: { origin: "http://evil.example" },
    });
    const res = await postJson("ListDocuments", "{}", { origin: "http://evil.example" });
    for (const r of [get, res]) {
      expect(r.status).toBe(403);
      expect(r.headers.get("access-control-allow-origin")).toBeNull();
      expect(await r.json()).toEqual({
        code: "permission_denied",
        message: "origin http://evil.example is not allowed to call this gateway (CORS_ALLOWED_ORIGINS)",
      });
    }
  });

  it("takes a page served from the gateway's own host without listing it", async () => {
    const res = await postJson("ListDocuments", "{}", { origin: gatewayUrl });
    expect(res.status).toBe(200);
    expect(res.headers.get("access-control-allow-origin")).toBe(gatewayUrl);
  });
});

describe("health", () => {
  it("/healthz and /readyz are 200 while the upstream serves", async () => {
    expect((await fetch(`${gatewayUrl}/healthz`)).status).toBe(200);
    const ready = await fetch(`${gatewayUrl}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({
      ready: true,
      upstreams: { "medmesh.documents.v1.DocumentService": "SERVING" },
    });
  });

  it("/metrics counts the calls made", async () => {
    const text = await (await fetch(`${gatewayUrl}/metrics`)).text();
    expect(text).toMatch(
      /medmesh_rpc_requests_total\{component="gateway",method="medmesh.documents.v1.DocumentService\/CreateDocument",code="ok"\} \d+/,
    );
  });
});

describe("a dead upstream", () => {
  let deadUrl: string;
  let stop: () => Promise<void>;
  beforeAll(async () => {
    const gw = await startGateway(
      { ...testEnv, IDENTITY_TARGET: identity.target, DOCUMENTS_TARGET: `127.0.0.1:${await closedPort()}` },
      documentsOnly,
    );
    deadUrl = `http://127.0.0.1:${gw.port}`;
    stop = gw.stop;
  });
  afterAll(() => stop());

  it("gives unavailable with a sentence, not a hang", async () => {
    const res = await fetch(`${deadUrl}/medmesh.documents.v1.DocumentService/ListDocuments`, {
      method: "POST",
      headers: { "content-type": "application/json", "connect-timeout-ms": "20000", ...auth },
      body: "{}",
    });
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({
      code: "unavailable",
      message: "DocumentService is unavailable right now; try again shortly",
    });
  });

  it("reports not ready", async () => {
    const res = await fetch(`${deadUrl}/readyz`);
    expect(res.status).toBe(503);
    expect(((await res.json()) as { ready: boolean }).ready).toBe(false);
  });
});

describe("rate limits by the contract's rate class", () => {
  let url: string;
  let stop: () => Promise<void>;
  beforeAll(async () => {
    const gw = await startGateway(
      {
        ...testEnv,
        IDENTITY_TARGET: identity.target,
        DOCUMENTS_TARGET: `127.0.0.1:${documentsPort}`,
        // In-process buckets: a fresh gateway starts with full ones, so reruns are independent.
        // The Redis bucket itself is covered in rate-limiter.test.ts.
        RATE_LIMITS: "read=2:0.01,write=1:0.01",
      },
      documentsOnly,
    );
    url = `http://127.0.0.1:${gw.port}`;
    stop = gw.stop;
  });
  afterAll(() => stop());

  it("refuses a caller over its bucket with resource_exhausted and a retry delay, per class", async () => {
    const list = () =>
      fetch(`${url}/medmesh.documents.v1.DocumentService/ListDocuments`, {
        method: "POST",
        headers: { "content-type": "application/json", ...auth },
        body: "{}",
      });
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) statuses.push((await list()).status);
    expect(statuses.slice(0, 2)).toEqual([200, 200]);
    const refused = await list();
    expect(refused.status).toBe(429);
    const body = (await refused.json()) as { code: string; message: string; details: Array<{ type: string }> };
    expect(body.code).toBe("resource_exhausted");
    expect(body.message).toMatch(/too many read calls; try again in \d+ s/);
    expect(body.details[0]!.type).toBe("google.rpc.RetryInfo");
  });

  it("misconfigured rules are refused at start with a sentence", async () => {
    await expect(
      startGateway({ ...testEnv, DOCUMENTS_TARGET: "127.0.0.1:1", RATE_LIMITS: "reads=lots" }),
    ).rejects.toThrow(/RATE_LIMITS: rate rule "reads=lots"/);
  });
});

describe("tracing", () => {
  it("one trace spans the browser's call, the gateway, the documents service and its SQL", async () => {
    spans.reset();
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    const res = await postJson(
      "CreateDocument",
      JSON.stringify({ document: { title: "traced", documentType: "DOCUMENT_TYPE_REVIEW" } }),
      {
        traceparent: `00-${traceId}-00f067aa0ba902b7-01`,
      },
    );
    expect(res.status).toBe(200);
    // The SQL and server spans end as the response leaves; give the exporter a moment.
    await new Promise((r) => setTimeout(r, 100));
    const ours = spans.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId);
    const names = ours.map((s) => `${s.attributes["medmesh.component"] ?? s.kind}:${s.name}`);
    expect(names).toContain("gateway:medmesh.documents.v1.DocumentService/CreateDocument");
    expect(names).toContain("documents:medmesh.documents.v1.DocumentService/CreateDocument");
    // The statement that writes the document (one statement with its first history row, so it may
    // open with a WITH rather than an INSERT).
    const writesDocument = (s: (typeof ours)[number]) =>
      s.attributes["db.system"] === "postgresql" &&
      /insert into "documents"/i.test(String(s.attributes["db.statement"]));
    expect(ours.some(writesDocument)).toBe(true);
    // Parent links: SQL under the documents server span, which is under the gateway's client span.
    const byId = new Map(ours.map((s) => [s.spanContext().spanId, s]));
    const insert = ours.find(writesDocument)!;
    const server = byId.get(insert.parentSpanContext?.spanId ?? "")!;
    expect(server.attributes["medmesh.component"]).toBe("documents");
    const client = byId.get(server.parentSpanContext?.spanId ?? "")!;
    const edge = byId.get(client.parentSpanContext?.spanId ?? "")!;
    expect(edge.attributes["medmesh.component"]).toBe("gateway");
    expect(edge.parentSpanContext?.spanId).toBe("00f067aa0ba902b7");
  });
});
