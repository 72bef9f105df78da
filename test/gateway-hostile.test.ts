import { execFile, execFileSync } from "node:child_process";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import {
  CountResponseSchema,
  EchoRequestSchema,
  EchoResponseSchema,
  MeshTestService,
  WaitRequestSchema,
  WaitResponseSchema,
} from "../gen/medmesh/meshtest/v1/meshtest_pb.js";
import { HealthCheckRequestSchema, HealthCheckResponseSchema } from "../gen/grpc/health/v1/health_pb.js";
import { IdentityService } from "../gen/medmesh/identity/v1/identity_pb.js";
import { meshInterceptors } from "../platform/grpc/interceptors/index.js";
import { register, startGrpcServer, type RunningGrpcServer } from "../platform/grpc/server.js";
import { startGateway } from "../gateway/main.js";
import { testEnv } from "./support/backends.js";
import { meshTestService, type Observed } from "./support/meshtest-service.js";

// The gateway as clients we did not write reach it: node:http, node:http2, fetch and curl, with
// bytes built by hand. Each test also checks that the gateway still answers afterwards.

const MAX_DEADLINE_MS = 5_000;
const ECHO = "/medmesh.meshtest.v1.MeshTestService/Echo";
const WAIT = "/medmesh.meshtest.v1.MeshTestService/Wait";
const COUNT = "/medmesh.meshtest.v1.MeshTestService/Count";
const CHECK = "/grpc.health.v1.Health/Check";
// Anything a caller of the gateway must never read: load-balancer states, peer addresses,
// retry bookkeeping, timings, stack traces.
const INTERNAL_DETAIL =
  /remote_addr|LB pick|previous attempts|name resolution|subchannel|127\.0\.0\.1|ipv4:|\bat \w+ \(/i;

const observed: Observed = { cancelledStreams: 0, waitsCancelled: 0 };
/** The request headers the upstream saw on the last Echo. */
let lastEchoHeaders = new Headers();
let server: RunningGrpcServer;
let stopGateway: () => Promise<void>;
let base: string;
let port: number;
const hasCurl = (() => {
  try {
    execFileSync("curl", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const p = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return p;
}

beforeAll(async () => {
  const impl = meshTestService(observed);
  server = await startGrpcServer({
    name: "meshtest",
    host: "127.0.0.1",
    port: 0,
    services: [
      register(MeshTestService, {
        ...impl,
        echo(req, ctx: HandlerContext) {
          lastEchoHeaders = new Headers(ctx.requestHeader);
          return impl.echo!(req, ctx);
        },
      }),
    ],
    interceptors: meshInterceptors({ component: "meshtest" }),
    // Longer than the gateway's, so a clamp seen by the handler is the gateway's.
    deadlines: { defaultUnaryMs: 5_000, maxUnaryMs: 120_000 },
    maxMessageBytes: 1024 * 1024,
  });
  // Identity is exposed too, pointing at a port nobody listens on: an upstream that is down.
  const gw = await startGateway(
    {
      ...testEnv,
      MESHTEST_TARGET: `127.0.0.1:${server.port}`,
      IDENTITY_TARGET: `127.0.0.1:${await closedPort()}`,
      MAX_DEADLINE_MS: String(MAX_DEADLINE_MS),
    },
    { services: [MeshTestService, IdentityService] },
  );
  stopGateway = gw.stop;
  port = gw.port;
  base = `http://127.0.0.1:${gw.port}`;
});

afterAll(async () => {
  await stopGateway?.();
  await server?.shutdown(1_000);
});

// ---- wire helpers ----

function frame(payload: Uint8Array, flags = 0): Buffer {
  const prefix = Buffer.alloc(5);
  prefix[0] = flags;
  prefix.writeUInt32BE(payload.length, 1);
  return Buffer.concat([prefix, payload]);
}

const echoBytes = (text: string) => toBinary(EchoRequestSchema, create(EchoRequestSchema, { text }));

/** Splits a gRPC(-web) body into its frames; gRPC-web trailers come back parsed. */
function frames(body: Buffer): { messages: Buffer[]; trailer?: Map<string, string[]> } {
  const messages: Buffer[] = [];
  let trailer: Map<string, string[]> | undefined;
  for (let at = 0; at + 5 <= body.length;) {
    const len = body.readUInt32BE(at + 1);
    const data = body.subarray(at + 5, at + 5 + len);
    if (body[at]! & 0x80) {
      trailer = new Map();
      for (const line of data.toString("latin1").split("\r\n")) {
        const i = line.indexOf(":");
        if (i <= 0) continue;
        const k = line.slice(0, i).trim().toLowerCase();
        trailer.set(k, [...(trailer.get(k) ?? []), line.slice(i + 1).trim()]);
      }
    } else messages.push(data);
    at += 5 + len;
  }
  return { messages, trailer };
}

interface H2Result {
  status: number;
  headers: http2.IncomingHttpHeaders;
  trailers: http2.IncomingHttpHeaders;
  body: Buffer;
}

/** One request over cleartext HTTP/2 with prior knowledge, as gRPC clients send it. */
function h2(path: string, headers: http2.OutgoingHttpHeaders, body?: Buffer, method = "POST"): Promise<H2Result> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(base);
    session.on("error", reject);
    const req = session.request({ ":method": method, ":path": path, ...headers });
    const chunks: Buffer[] = [];
    let status = 0;
    let responseHeaders: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    req.setTimeout(10_000, () => req.close(http2.constants.NGHTTP2_CANCEL));
    req.on("response", (h) => {
      status = Number(h[":status"]);
      responseHeaders = h;
    });
    req.on("trailers", (t) => (trailers = t));
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", reject);
    req.on("end", () => {
      session.close();
      resolve({ status, headers: responseHeaders, trailers, body: Buffer.concat(chunks) });
    });
    req.end(body);
  });
}

/** A gRPC call over h2c: the status is in the trailers, or in the headers of a trailers-only answer. */
async function grpc(path: string, message: Uint8Array | Buffer, headers: http2.OutgoingHttpHeaders = {}) {
  const body = Buffer.isBuffer(message) ? message : frame(message);
  const r = await h2(path, { "content-type": "application/grpc", te: "trailers", ...headers }, body);
  const status = r.trailers["grpc-status"] ?? r.headers["grpc-status"];
  const msg = r.trailers["grpc-message"] ?? r.headers["grpc-message"];
  return {
    ...r,
    code: Number(status),
    message: decodeURIComponent(String(msg ?? "")),
    messages: frames(r.body).messages,
  };
}

interface H1Result {
  status: number;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
}

/** One HTTP/1.1 request with node:http, which sends whatever headers it is given. */
function h1(path: string, method: string, headers: Record<string, string>, body?: Buffer | string): Promise<H1Result> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port, path, method, headers, agent: false, timeout: 10_000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            rawHeaders: res.rawHeaders,
            body: Buffer.concat(chunks),
          }),
        );
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error("no answer within 10 s")));
    req.on("error", reject);
    req.end(body);
  });
}

/** A gRPC-web call with fetch; the status is in the trailer frame. */
async function grpcWeb(path: string, body: Buffer, headers: Record<string, string> = {}) {
  const res = await fetch(base + path, {
    method: "POST",
    headers: { "content-type": "application/grpc-web+proto", ...headers },
    body: new Uint8Array(body),
    signal: AbortSignal.timeout(10_000),
  });
  const raw = Buffer.from(await res.arrayBuffer());
  const { messages, trailer } = frames(raw);
  return {
    res,
    raw,
    messages,
    trailer,
    code: Number(trailer?.get("grpc-status")?.[0]),
    message: decodeURIComponent(trailer?.get("grpc-message")?.[0] ?? ""),
  };
}

function curl(args: string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) =>
    execFile("curl", ["-sS", "--max-time", "10", ...args], { encoding: "latin1" }, (err, stdout, stderr) =>
      err ? reject(err) : resolve({ stdout, stderr }),
    ),
  );
}

/** Every trailer name once, and no value repeated into itself ("x, x"). */
function expectNoDuplicates(trailers: Map<string, string[]> | http2.IncomingHttpHeaders | undefined) {
  const entries = trailers instanceof Map ? [...trailers] : Object.entries(trailers ?? {});
  for (const [k, v] of entries) {
    const values = Array.isArray(v) ? v : [String(v)];
    expect(values, `trailer ${k}`).toHaveLength(1);
    const parts = values[0]!.split(", ");
    if (parts.length > 1) expect(new Set(parts).size, `trailer ${k}: ${values[0]}`).toBe(parts.length);
  }
}

function expectNoInternalDetail(...texts: unknown[]) {
  for (const t of texts) expect(typeof t === "string" ? t : JSON.stringify(t)).not.toMatch(INTERNAL_DETAIL);
}

let inputsTried = 0;

afterEach(async () => {
  // Whatever the test sent, the gateway answers the next caller.
  const r = await grpc(ECHO, echoBytes("still here"));
  expect(r.code).toBe(0);
  expect(fromBinary(EchoResponseSchema, r.messages[0]!).text).toBe("still here");
});

afterAll(() => {
  // Not an assertion: the count is reported so a reader knows how much was thrown at it.
  console.info(`gateway-hostile: ${inputsTried} hostile inputs tried`);
});

describe("hop-by-hop and other headers that are not metadata", () => {
  const hopHeaders: Array<[string, string]> = [
    ["Connection", "keep-alive"],
    ["Connection", "Upgrade, HTTP2-Settings"],
    ["Keep-Alive", "timeout=5, max=100"],
    ["Proxy-Connection", "keep-alive"],
    ["TE", "gzip"],
    ["TE", "trailers, deflate"],
    ["Upgrade", "websocket"],
    ["Upgrade", "h2c"],
    ["HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"],
    ["Proxy-Authorization", "Basic Zm9vOmJhcg=="],
    ["Trailer", "x-later"],
    ["grpc-previous-rpc-attempts", "7"],
    ["x!odd", "1"],
  ];

  it.each(hopHeaders)("%s: %s is answered at once and not forwarded", async (name, value) => {
    inputsTried++;
    const res = await h1(
      ECHO,
      "POST",
      { "content-type": "application/json", [name]: value, "x-custom": "kept" },
      JSON.stringify({ text: "hop" }),
    );
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body.toString())).toEqual({ text: "hop" });
    expect(lastEchoHeaders.get(name.toLowerCase())).toBeNull();
    expect(lastEchoHeaders.get("x-custom")).toBe("kept");
  });

  it("headers named by Connection stay behind; authorization, traceparent and x- headers travel", async () => {
    inputsTried++;
    const traceId = "0af7651916cd43dd8448eb211c80319c";
    const res = await h1(
      ECHO,
      "POST",
      {
        "content-type": "application/json",
        connection: "keep-alive, x-hop-secret",
        "x-hop-secret": "only for the next hop",
        cookie: "session=abc",
        authorization: "Bearer not-checked-for-a-public-method",
        traceparent: `00-${traceId}-b7ad6b7169203331-01`,
        "x-request-id": "r-1",
      },
      JSON.stringify({ text: "named" }),
    );
    expect(res.status).toBe(200);
    expect(lastEchoHeaders.get("x-hop-secret")).toBeNull();
    expect(lastEchoHeaders.get("cookie")).toBeNull();
    expect(lastEchoHeaders.get("host")).toBeNull();
    expect(lastEchoHeaders.get("content-length")).toBeNull();
    expect(lastEchoHeaders.get("authorization")).toBe("Bearer not-checked-for-a-public-method");
    expect(lastEchoHeaders.get("x-request-id")).toBe("r-1");
    // The gateway's client span continues the caller's trace: same trace id, a new parent.
    expect(lastEchoHeaders.get("traceparent")).toContain(traceId);
  });

  it.skipIf(!hasCurl)("exactly what curl --http2 sends over HTTP/1.1 (Upgrade: h2c, HTTP2-Settings)", async () => {
    inputsTried++;
    const { stdout, stderr } = await curl([
      "-v",
      "--http2",
      "-H",
      "content-type: application/json",
      "-d",
      '{"text":"curl"}',
      base + ECHO,
    ]);
    expect(stderr).toMatch(/Upgrade: h2c/);
    expect(stderr).toMatch(/HTTP2-Settings:/);
    expect(JSON.parse(stdout)).toEqual({ text: "curl" });
    expect(lastEchoHeaders.get("upgrade")).toBeNull();
    expect(lastEchoHeaders.get("http2-settings")).toBeNull();
  });

  it.skipIf(!hasCurl)("TE: gzip over h2c with curl --http2-prior-knowledge", async () => {
    inputsTried++;
    const { stdout } = await curl([
      "--http2-prior-knowledge",
      "-H",
      "content-type: application/json",
      "-H",
      "te: gzip",
      "-d",
      '{"text":"te"}',
      base + ECHO,
    ]);
    expect(JSON.parse(stdout)).toEqual({ text: "te" });
  });

  it("a value gRPC metadata cannot carry is refused with a sentence, not retried", async () => {
    inputsTried += 2;
    const latin = await h1(
      ECHO,
      "POST",
      { "content-type": "application/json", "x-name": "caf\u00e9" },
      JSON.stringify({ text: "x" }),
    );
    expect(latin.status).toBe(400);
    expect(JSON.parse(latin.body.toString())).toMatchObject({ code: "invalid_argument" });
    const bin = await h1(
      ECHO,
      "POST",
      { "content-type": "application/json", "x-blob-bin": "!!not base64!!" },
      JSON.stringify({ text: "x" }),
    );
    expect(bin.status).toBe(400);
    expect(JSON.parse(bin.body.toString()).message).toMatch(/x-blob-bin/);
  });
});

describe("malformed bodies are invalid_argument", () => {
  const malformed: Array<[string, Buffer]> = [
    ["garbage message", frame(Buffer.from([0xff, 0xff, 0xff, 0xff]))],
    ["truncated length prefix", Buffer.from([0, 0, 0])],
    ["length larger than the body", Buffer.concat([Buffer.from([0, 0, 0, 0, 64]), Buffer.from(echoBytes("x"))])],
    ["compressed flag with no encoding", frame(echoBytes("x"), 0x01)],
    [
      "text where a frame should be, length within the limit",
      Buffer.from("\u0000\u0000\u0000\u0000\u0010not protobuf!!!!"),
    ],
  ];

  it.each(malformed)("gRPC over h2c: %s", async (_name, body) => {
    inputsTried++;
    const r = await grpc(ECHO, body);
    expect(r.status).toBe(200);
    expect(r.code).toBe(3);
    expect(r.message).not.toBe("");
    expectNoDuplicates(r.trailers);
  });

  it.each(malformed)("gRPC-web with fetch: %s", async (_name, body) => {
    inputsTried++;
    const r = await grpcWeb(ECHO, body);
    expect(r.res.status).toBe(200);
    expect(r.code).toBe(3);
    expectNoDuplicates(r.trailer);
  });

  it("a length prefix beyond the body limit is resource_exhausted, gRPC and gRPC-web alike", async () => {
    inputsTried += 2;
    const text = Buffer.from("this is not a frame at all, just text"); // declares 1.7 GB
    expect((await grpc(ECHO, text)).code).toBe(8);
    expect((await grpcWeb(ECHO, text)).code).toBe(8);
  });

  it("Connect binary with fetch: a body that is not the message -> 400 invalid_argument", async () => {
    inputsTried++;
    const res = await fetch(base + ECHO, {
      method: "POST",
      headers: { "content-type": "application/proto" },
      body: new Uint8Array([0x0a, 0x10, 0x61]),
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toEqual({
      code: "invalid_argument",
      message: "the request is not a valid medmesh.meshtest.v1.EchoRequest message",
    });
  });

  it.each(['{"text":', "[1,2]", '{"text": 5}', '{"nope": 1}', "\u0000"])("bad JSON %j -> 400", async (body) => {
    inputsTried++;
    const res = await fetch(base + ECHO, { method: "POST", headers: { "content-type": "application/json" }, body });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { code: string }).code).toBe("invalid_argument");
  });
});

describe("deadlines", () => {
  const waitLong = frame(toBinary(WaitRequestSchema, create(WaitRequestSchema, { ms: 30_000 })));

  // Deadlines of a millisecond or two are left out on purpose: they may expire on the way to the
  // service, which is the service's matter (platform/grpc/adapter.ts), not the gateway's.
  it.each(["200m", "1u", "1n"])("gRPC grpc-timeout %s that expires -> deadline_exceeded, never OK", async (t) => {
    inputsTried++;
    const r = await grpc(WAIT, waitLong, { "grpc-timeout": t });
    expect(r.code).toBe(4);
    // Expired at the gateway, before or during the call: either way a sentence about the deadline.
    expect(r.message).toMatch(/^the deadline expired before the call (started|finished)$/);
    expectNoInternalDetail(r.message, r.trailers, r.headers);
    expectNoDuplicates(r.trailers);
  });

  it("gRPC-web grpc-timeout that expires -> deadline_exceeded", async () => {
    inputsTried++;
    const r = await grpcWeb(WAIT, waitLong, { "grpc-timeout": "200m" });
    expect(r.code).toBe(4);
    expectNoInternalDetail(r.message);
  });

  it.each(["200", "0"])("Connect connect-timeout-ms %s that expires -> 504 deadline_exceeded", async (t) => {
    inputsTried++;
    const res = await fetch(base + WAIT, {
      method: "POST",
      headers: { "content-type": "application/json", "connect-timeout-ms": t },
      body: JSON.stringify({ ms: 30_000 }),
    });
    expect(res.status).toBe(504);
    const body = (await res.json()) as { code: string; message: string };
    expect(body.code).toBe("deadline_exceeded");
    expectNoInternalDetail(body);
  });

  it("a server stream whose deadline passes ends deadline_exceeded, not OK", async () => {
    inputsTried++;
    const count = frame(Buffer.from([0x08, 0xe8, 0x07, 0x10, 0xc8, 0x01])); // count 1000, every 200 ms
    const r = await grpc(COUNT, count, { "grpc-timeout": "500m" });
    expect(r.code).toBe(4);
    expect(r.messages.length).toBeGreaterThan(0);
    expect(fromBinary(CountResponseSchema, r.messages[0]!).n).toBe(1);
  });

  it.each([
    ["grpc-timeout", "60100m"],
    ["grpc-timeout", "2H"],
    ["grpc-timeout", "99999999S"],
  ])("an over-long %s: %s is clamped to MAX_DEADLINE_MS, not refused", async (name, value) => {
    inputsTried++;
    const r = await grpc(WAIT, frame(toBinary(WaitRequestSchema, create(WaitRequestSchema, { ms: 0 }))), {
      [name]: value,
    });
    expect(r.code).toBe(0);
    const remaining = Number(fromBinary(WaitResponseSchema, r.messages[0]!).remainingMs);
    expect(remaining).toBeGreaterThan(0);
    expect(remaining).toBeLessThanOrEqual(MAX_DEADLINE_MS);
  });

  it("an over-long connect-timeout-ms is clamped too", async () => {
    inputsTried++;
    const res = await fetch(base + WAIT, {
      method: "POST",
      headers: { "content-type": "application/json", "connect-timeout-ms": "60100" },
      body: JSON.stringify({ ms: 0 }),
    });
    expect(res.status).toBe(200);
    const remaining = Number(((await res.json()) as { remainingMs: string }).remainingMs);
    expect(remaining).toBeGreaterThan(0);
    expect(remaining).toBeLessThanOrEqual(MAX_DEADLINE_MS);
  });

  it("a grpc-timeout that does not parse is invalid_argument", async () => {
    inputsTried++;
    const r = await grpc(ECHO, echoBytes("x"), { "grpc-timeout": "soon" });
    expect(r.code).toBe(3);
  });
});

describe("methods and content types", () => {
  it.each(["PUT", "DELETE", "PATCH", "OPTIONS"])("%s -> 405 with Allow and a sentence", async (method) => {
    inputsTried++;
    const res = await h1(ECHO, method, { "content-type": "application/json" }, "{}");
    expect(res.status).toBe(405);
    expect(res.headers.allow).toBe("POST");
    const body = JSON.parse(res.body.toString()) as { code: string; message: string };
    expect(body.code).toBe("unimplemented");
    expect(body.message).toContain(`not ${method}`);
  });

  it("GET on a method with side effects -> 405 Allow: POST", async () => {
    inputsTried++;
    const res = await fetch(`${base}${ECHO}?connect=v1&encoding=json&message=%7B%7D`);
    expect(res.status).toBe(405);
    expect(res.headers.get("allow")).toBe("POST");
    expect(((await res.json()) as { message: string }).message).toMatch(/POST/);
  });

  it("GET with a gRPC content type over h2c -> 405 Allow: POST", async () => {
    inputsTried++;
    const r = await h2(CHECK, { "content-type": "application/grpc" }, undefined, "GET");
    expect(r.status).toBe(405);
    expect(r.headers.allow).toBe("POST");
  });

  it.each(["text/plain", "application/xml", "multipart/form-data; boundary=x", ""])(
    "content type %j -> 415 with a sentence",
    async (ct) => {
      inputsTried++;
      const res = await h1(ECHO, "POST", ct ? { "content-type": ct } : {}, "{}");
      expect(res.status).toBe(415);
      const body = JSON.parse(res.body.toString()) as { code: string; message: string };
      expect(body.code).toBe("invalid_argument");
      expect(body.message).toMatch(/application\/json/);
    },
  );
});

describe("gRPC-web text", () => {
  it("a unary call round-trips in base64", async () => {
    inputsTried++;
    const res = await fetch(base + ECHO, {
      method: "POST",
      headers: { "content-type": "application/grpc-web-text", "x-grpc-web": "1" },
      body: frame(echoBytes("in text")).toString("base64"),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("application/grpc-web-text+proto");
    const text = await res.text();
    expect(text).toMatch(/^[A-Za-z0-9+/=]+$/);
    // Each piece is padded on its own; decode piece by piece, as grpc-web clients do.
    const raw = Buffer.concat((text.match(/[^=]+=*/g) ?? []).map((p) => Buffer.from(p, "base64")));
    const { messages, trailer } = frames(raw);
    expect(fromBinary(EchoResponseSchema, messages[0]!).text).toBe("in text");
    expect(trailer?.get("grpc-status")).toEqual(["0"]);
  });

  it("a server stream arrives frame by frame, and a body that is not base64 is invalid_argument", async () => {
    inputsTried += 2;
    const res = await fetch(base + COUNT, {
      method: "POST",
      headers: { "content-type": "application/grpc-web-text+proto" },
      body: frame(Buffer.from([0x08, 0x03])).toString("base64"),
    });
    const text = await res.text();
    const raw = Buffer.concat((text.match(/[^=]+=*/g) ?? []).map((p) => Buffer.from(p, "base64")));
    const { messages, trailer } = frames(raw);
    expect(messages.map((m) => fromBinary(CountResponseSchema, m).n)).toEqual([1, 2, 3]);
    expect(trailer?.get("grpc-status")).toEqual(["0"]);

    const bad = await fetch(base + ECHO, {
      method: "POST",
      headers: { "content-type": "application/grpc-web-text" },
      body: "%%% not base64 %%%",
    });
    const badRaw = Buffer.from(await bad.text(), "base64");
    expect(frames(badRaw).trailer?.get("grpc-status")).toEqual(["3"]);
  });
});

describe("health at the gateway", () => {
  const check = (service: string) =>
    grpc(CHECK, toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, { service })));

  it("answers for the gateway and for every exposed service, from its upstream", async () => {
    inputsTried++;
    const statuses: Record<string, number> = {};
    for (const service of ["", MeshTestService.typeName, IdentityService.typeName]) {
      const r = await check(service);
      expect(r.code, service).toBe(0);
      statuses[service] = fromBinary(HealthCheckResponseSchema, r.messages[0]!).status;
    }
    // 1 SERVING, 2 NOT_SERVING: identity's upstream is down.
    expect(statuses).toEqual({ "": 1, [MeshTestService.typeName]: 1, [IdentityService.typeName]: 2 });
  });

  it("an unknown service is not_found", async () => {
    inputsTried++;
    expect((await check("medmesh.nothing.v1.Nothing")).code).toBe(5);
  });
});

describe("what reaches an external caller", () => {
  it("a dead upstream is unavailable with a sentence, no addresses or attempts", async () => {
    inputsTried++;
    const res = await fetch(`${base}/medmesh.identity.v1.IdentityService/Login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ login: "someone", password: "secret words" }),
    });
    expect(res.status).toBe(503);
    const text = await res.text();
    expect(JSON.parse(text).code).toBe("unavailable");
    const headers: string[] = [];
    res.headers.forEach((v, k) => headers.push(`${k}: ${v}`));
    expectNoInternalDetail(text, headers);
  });

  it("an upstream error's trailers come back once, in every protocol", async () => {
    inputsTried += 3;
    const g = await grpc(ECHO, echoBytes("refuse"));
    expect(g.code).toBe(9);
    expect(g.message).toBe("refused on purpose");
    expectNoDuplicates(g.trailers);
    expectNoDuplicates(Object.keys(g.trailers).length ? g.trailers : g.headers);

    const w = await grpcWeb(ECHO, frame(echoBytes("refuse")));
    expect(w.code).toBe(9);
    expectNoDuplicates(w.trailer);

    const c = await h1(ECHO, "POST", { "content-type": "application/json" }, JSON.stringify({ text: "refuse" }));
    expect(c.status).toBe(400);
    const names = c.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    expect(new Set(names).size).toBe(names.length);
    for (const [k, v] of Object.entries(c.headers)) {
      const parts = String(v).split(", ");
      if (k.startsWith("trailer-") && parts.length > 1) expect(new Set(parts).size).toBe(parts.length);
    }
  });

  it("a bug upstream is masked as internal, with no stack", async () => {
    inputsTried++;
    const g = await grpc(ECHO, echoBytes("boom"));
    expect(g.code).toBe(13);
    expectNoInternalDetail(g.message, g.trailers, g.headers);
    expect(g.message).not.toMatch(/secret stack/);
  });
});
