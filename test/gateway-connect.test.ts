import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import http from "node:http";
import { gzipSync } from "node:zlib";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type HandlerContext } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import { GetMeResponseSchema, IdentityService } from "../gen/medmesh/identity/v1/identity_pb.js";
import { EchoRequestSchema, EchoResponseSchema, MeshTestService } from "../gen/medmesh/meshtest/v1/meshtest_pb.js";
import { meshInterceptors } from "../platform/grpc/interceptors/index.js";
import { register, startGrpcServer, type RunningGrpcServer } from "../platform/grpc/server.js";
import { startGateway } from "../gateway/main.js";
import { testEnv } from "./support/backends.js";
import { startTestIdentity, type TestIdentity } from "./support/identity.js";
import { meshTestService, type Observed } from "./support/meshtest-service.js";

// The Connect protocol as the gateway serves it itself (gateway/connect-edge.ts), driven by
// clients we did not write: curl over HTTP/1.1 and HTTP/2, buf curl, fetch (as a browser calls),
// and connect-node. Where connect-node still answers (compressed requests), the two paths are
// held against each other on the same calls.

const ECHO = "/medmesh.meshtest.v1.MeshTestService/Echo";
const COUNT = "/medmesh.meshtest.v1.MeshTestService/Count";
const GET_ME = "/medmesh.identity.v1.IdentityService/GetMe";
const MAX_BODY = 64 * 1024;

const observed: Observed = { cancelledStreams: 0, waitsCancelled: 0 };
let server: RunningGrpcServer;
let identity: TestIdentity;
let stopGateway: () => Promise<void>;
let base: string;

beforeAll(async () => {
  identity = await startTestIdentity();
  const impl = meshTestService(observed);
  server = await startGrpcServer({
    name: "meshtest",
    host: "127.0.0.1",
    port: 0,
    services: [
      register(MeshTestService, {
        ...impl,
        echo(req, ctx: HandlerContext) {
          ctx.responseHeader.set("x-answer", "header");
          ctx.responseTrailer.set("x-after", "trailer");
          if (req.text === "details") {
            throw new ConnectError("the text is not acceptable", Code.InvalidArgument, undefined, [
              {
                desc: BadRequestSchema,
                value: create(BadRequestSchema, { fieldViolations: [{ field: "text", description: "not this" }] }),
              },
            ]);
          }
          return impl.echo!(req, ctx);
        },
      }),
    ],
    interceptors: meshInterceptors({ component: "meshtest" }),
    maxMessageBytes: 1024 * 1024,
  });
  const gw = await startGateway(
    {
      ...testEnv,
      MESHTEST_TARGET: `127.0.0.1:${server.port}`,
      IDENTITY_TARGET: identity.target,
      GATEWAY_MAX_BODY_BYTES: String(MAX_BODY),
    },
    { services: [MeshTestService, IdentityService] },
  );
  stopGateway = gw.stop;
  base = `http://127.0.0.1:${gw.port}`;
});

afterAll(async () => {
  await stopGateway?.();
  await server?.shutdown(1_000);
  await identity?.stop();
});

function envelope(payload: Uint8Array, flags = 0): Buffer {
  const prefix = Buffer.alloc(5);
  prefix[0] = flags;
  prefix.writeUInt32BE(payload.length, 1);
  return Buffer.concat([prefix, payload]);
}

/** A Connect stream body split into its messages and its end-of-stream message. */
function envelopes(body: Buffer): { messages: Buffer[]; end?: { error?: { code: string; message?: string } } } {
  const messages: Buffer[] = [];
  let end;
  for (let at = 0; at + 5 <= body.length;) {
    const len = body.readUInt32BE(at + 1);
    const data = body.subarray(at + 5, at + 5 + len);
    if (body[at]! & 0x02) end = JSON.parse(data.toString("utf8"));
    else messages.push(Buffer.from(data));
    at += 5 + len;
  }
  return { messages, end };
}

function curl(args: string[]): Promise<{ stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) =>
    execFile("curl", ["-sS", "--max-time", "10", ...args], { encoding: "buffer" }, (err, stdout, stderr) =>
      err ? reject(new Error(`${err.message}\n${stderr.toString()}`)) : resolve({ stdout, stderr: stderr.toString() }),
    ),
  );
}

/** A raw HTTP/1.1 exchange, to see every header as sent. */
function h1(
  path: string,
  headers: Record<string, string>,
  body: Buffer | string,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${base}${path}`, { method: "POST", headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

describe("independent clients", () => {
  it.each([
    ["HTTP/1.1", ["--http1.1"]],
    ["HTTP/1.1 after curl --http2's upgrade offer", ["--http2"]],
    ["HTTP/2 with prior knowledge", ["--http2-prior-knowledge"]],
  ])("curl, %s: JSON unary POST", async (_name, flags) => {
    const { stdout } = await curl([
      ...flags,
      "-H",
      "content-type: application/json",
      "-H",
      "connect-protocol-version: 1",
      "-d",
      '{"text":"from curl"}',
      base + ECHO,
    ]);
    expect(JSON.parse(stdout.toString())).toEqual({ text: "from curl" });
  });

  it("curl: GET with ?encoding=json&message=…, and with base64 binary", async () => {
    const { authorization } = await identity.bearer("doctor");
    const json = await curl([
      "-H",
      `authorization: ${authorization}`,
      `${base}${GET_ME}?connect=v1&encoding=json&message=${encodeURIComponent("{}")}`,
    ]);
    const me = JSON.parse(json.stdout.toString()) as { subject: string; role: string };
    expect(me.subject).toBe(await identity.userId("doctor"));
    expect(me.role).toBe("ROLE_DOCTOR");
    const binary = await curl([
      "--http2-prior-knowledge",
      "-H",
      `authorization: ${authorization}`,
      `${base}${GET_ME}?connect=v1&encoding=proto&base64=1&message=`,
    ]);
    expect(fromBinary(GetMeResponseSchema, binary.stdout).subject).toBe(me.subject);
  });

  it.each([
    ["HTTP/1.1", ["--http1.1"]],
    ["HTTP/2", ["--http2-prior-knowledge"]],
  ])("curl, %s: a server stream in Connect's envelopes, ending with the end-of-stream message", async (_n, flags) => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "connect-edge-")), "count.bin");
    fs.writeFileSync(file, envelope(Buffer.from(JSON.stringify({ count: 3 }))));
    const { stdout } = await curl([
      ...flags,
      "-H",
      "content-type: application/connect+json",
      "--data-binary",
      `@${file}`,
      base + COUNT,
    ]);
    const { messages, end } = envelopes(stdout);
    expect(messages.map((m) => JSON.parse(m.toString()))).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }]);
    expect(end).toEqual({});
  });

  it("buf curl --protocol connect over HTTP/1.1, with the schema of this repository", async () => {
    const { authorization } = await identity.bearer("doctor");
    const out = await new Promise<string>((resolve, reject) =>
      execFile(
        "npx",
        [
          "buf",
          "curl",
          "--protocol",
          "connect",
          "--schema",
          ".",
          "-H",
          `authorization: ${authorization}`,
          "-d",
          "{}",
          base + GET_ME,
        ],
        { timeout: 60_000 },
        (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)),
      ),
    );
    expect((JSON.parse(out) as { subject: string }).subject).toBe(await identity.userId("doctor"));
  }, 90_000);

  it("connect-node over HTTP/2, binary: unary and a server stream", async () => {
    const client = createClient(
      MeshTestService,
      createConnectTransport({ baseUrl: base, httpVersion: "2", useBinaryFormat: true }),
    );
    expect((await client.echo({ text: "binary" })).text).toBe("binary");
    const ns: number[] = [];
    for await (const r of client.count({ count: 4 })) ns.push(r.n);
    expect(ns).toEqual([1, 2, 3, 4]);
    const err = await client.echo({ text: "details" }).catch((e: unknown) => ConnectError.from(e));
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
    expect((err as ConnectError).findDetails(BadRequestSchema)[0]!.fieldViolations[0]!.field).toBe("text");
  });
});

describe("what the Connect path decides", () => {
  const post = (body: string, headers: Record<string, string> = {}) =>
    fetch(base + ECHO, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });

  it("malformed JSON -> 400 invalid_argument with a sentence naming the message expected", async () => {
    const res = await post('{"text": "unterminated');
    expect(res.status).toBe(400);
    const body = (await res.json()) as { code: string; message: string };
    expect(body.code).toBe("invalid_argument");
    expect(body.message).toMatch(
      /^the request is not valid JSON \(.+\); a medmesh\.meshtest\.v1\.EchoRequest message was expected$/,
    );
  });

  it("an unknown field -> 400 invalid_argument naming it, and the service is not called", async () => {
    const res = await post(JSON.stringify({ txet: "typo" }));
    expect(res.status).toBe(400);
    const body = (await res.json()) as { code: string; message: string };
    expect(body.code).toBe("invalid_argument");
    expect(body.message).toMatch(/"txet" is unknown/);
  });

  it("a content type that is not Connect's -> 415, a stream's type on a unary method too", async () => {
    for (const ct of ["text/plain", "application/connect+json"]) {
      const res = await post("{}", { "content-type": ct });
      expect(res.status, ct).toBe(415);
      expect(((await res.json()) as { message: string }).message).toMatch(/application\/json/);
    }
  });

  it("GET on a method with side effects -> 405, Allow: POST; GET without an encoding -> 415", async () => {
    const res = await fetch(`${base}${ECHO}?connect=v1&encoding=json&message=%7B%7D`);
    expect(res.status).toBe(405);
    expect(res.headers.get("allow")).toBe("POST");
    const { authorization } = await identity.bearer("doctor");
    const noEncoding = await fetch(`${base}${GET_ME}?message=%7B%7D`, { headers: { authorization } });
    expect(noEncoding.status).toBe(415);
    expect(((await noEncoding.json()) as { message: string }).message).toMatch(/encoding=json/);
  });

  it("a GET whose message is not the base64 it claims -> 400 invalid_argument", async () => {
    const { authorization } = await identity.bearer("doctor");
    const res = await fetch(`${base}${GET_ME}?encoding=proto&base64=1&message=%25%25%25`, {
      headers: { authorization },
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toEqual({
      code: "invalid_argument",
      message: "the message parameter is not base64, as base64=1 says it is",
    });
  });

  it("a server-streaming request that is not exactly one envelope ends invalid_argument, in the stream", async () => {
    const one = envelope(Buffer.from(JSON.stringify({ count: 1 })));
    for (const [body, said] of [
      [Buffer.concat([one, one]), /exactly one request message/],
      [one.subarray(0, one.length - 2), /ends inside a message/],
    ] as const) {
      const res = await fetch(base + COUNT, {
        method: "POST",
        headers: { "content-type": "application/connect+json" },
        body: new Uint8Array(body),
      });
      expect(res.status).toBe(200);
      const { messages, end } = envelopes(Buffer.from(await res.arrayBuffer()));
      expect(messages).toHaveLength(0);
      expect(end?.error?.code).toBe("invalid_argument");
      expect(end?.error?.message).toMatch(said);
    }
  });

  it("a body over the limit -> 429 resource_exhausted, announced or not", async () => {
    const big = JSON.stringify({ text: "x".repeat(MAX_BODY) });
    const announced = await post(big);
    expect(announced.status).toBe(429);
    expect(((await announced.json()) as { message: string }).message).toMatch(/larger than the 65536 bytes/);
    // Chunked: no content-length to go by, so the gateway counts as it reads.
    const chunked = await h1(ECHO, { "content-type": "application/json", "transfer-encoding": "chunked" }, big);
    expect(chunked.status).toBe(429);
    expect(JSON.parse(chunked.body.toString()).code).toBe("resource_exhausted");
  });

  it("connect-timeout-ms: a stream cut by it ends deadline_exceeded; one that is not a number is invalid_argument", async () => {
    const res = await fetch(base + COUNT, {
      method: "POST",
      headers: { "content-type": "application/connect+json", "connect-timeout-ms": "500" },
      body: new Uint8Array(envelope(Buffer.from(JSON.stringify({ count: 1000, intervalMs: 200 })))),
    });
    expect(res.status).toBe(200);
    const { messages, end } = envelopes(Buffer.from(await res.arrayBuffer()));
    expect(messages.length).toBeGreaterThan(0);
    expect(end?.error?.code).toBe("deadline_exceeded");
    const bad = await post(JSON.stringify({ text: "x" }), { "connect-timeout-ms": "soon" });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { message: string }).message).toMatch(/connect-timeout-ms "soon"/);
  });

  it("a Connect stream the browser cancels is cancelled at the service", async () => {
    const before = observed.cancelledStreams;
    const abort = new AbortController();
    const res = await fetch(base + COUNT, {
      method: "POST",
      headers: { "content-type": "application/connect+json" },
      body: new Uint8Array(envelope(Buffer.from(JSON.stringify({ count: 1000, intervalMs: 50 })))),
      signal: abort.signal,
    });
    const reader = res.body!.getReader();
    expect((await reader.read()).done).toBe(false);
    abort.abort();
    for (let i = 0; i < 50 && observed.cancelledStreams === before; i++) await sleep(20);
    expect(observed.cancelledStreams).toBe(before + 1);
  });

  it("unary headers come back as they are, trailers with Connect's trailer- prefix, errors too", async () => {
    const ok = await h1(ECHO, { "content-type": "application/json" }, JSON.stringify({ text: "hi" }));
    expect(ok.status).toBe(200);
    expect(ok.headers["x-answer"]).toBe("header");
    expect(ok.headers["trailer-x-after"]).toBe("trailer");
    expect(ok.headers["content-type"]).toBe("application/json");
    const refused = await h1(ECHO, { "content-type": "application/json" }, JSON.stringify({ text: "refuse" }));
    expect(refused.status).toBe(400);
    expect(JSON.parse(refused.body.toString())).toEqual({ code: "failed_precondition", message: "refused on purpose" });
    // The service answered the refusal trailers-only: its metadata arrive as trailers.
    expect(refused.headers["trailer-x-after"]).toBe("trailer");
  });

  it("error details travel as Connect's {type, value}, the value base64 of the detail", async () => {
    const res = await post(JSON.stringify({ text: "details" }));
    expect(res.status).toBe(400);
    const body = (await res.json()) as { details: Array<{ type: string; value: string; debug?: unknown }> };
    expect(body.details).toHaveLength(1);
    expect(body.details[0]!.type).toBe("google.rpc.BadRequest");
    const detail = fromBinary(BadRequestSchema, Buffer.from(body.details[0]!.value, "base64"));
    expect(detail.fieldViolations[0]!.description).toBe("not this");
    // A standard detail also comes readable, as connect-node writes the details it makes itself.
    expect(body.details[0]!.debug).toEqual({ fieldViolations: [{ field: "text", description: "not this" }] });
  });

  it("a stream's error and trailers arrive in its end-of-stream message", async () => {
    const res = await fetch(base + COUNT, {
      method: "POST",
      headers: { "content-type": "application/connect+json" },
      body: new Uint8Array(envelope(Buffer.from(JSON.stringify({ count: 5000 })))),
    });
    expect(res.status).toBe(200);
    const { messages, end } = envelopes(Buffer.from(await res.arrayBuffer()));
    expect(messages).toHaveLength(0);
    expect(end?.error?.code).toBe("invalid_argument");
    expect(end?.error?.message).toMatch(/count/);
  });
});

describe("the same answers as connect-node, which still serves compressed requests", () => {
  // Each request is sent twice: plain (the gateway's own Connect path) and gzip-compressed
  // (declined by it, so connect-node decodes and grpc-js forwards). Clients must not tell them apart.
  async function both(path: string, json: unknown, headers: Record<string, string> = {}) {
    const raw = Buffer.from(JSON.stringify(json));
    const send = (body: Buffer, extra: Record<string, string>) =>
      h1(path, { "content-type": "application/json", ...headers, ...extra }, body);
    const ours = await send(raw, {});
    const theirs = await send(gzipSync(raw), { "content-encoding": "gzip" });
    const view = (r: Awaited<ReturnType<typeof send>>) => ({
      status: r.status,
      contentType: r.headers["content-type"],
      // connect-node writes a readable copy (debug) only of details it made itself; the gateway
      // writes one for every standard detail. Optional in the protocol, and left out here.
      body: JSON.parse(r.body.toString(), (k, v: unknown) => (k === "debug" ? undefined : v)) as unknown,
      custom: Object.fromEntries(
        Object.entries(r.headers).filter(([k]) => k.startsWith("x-") || k.startsWith("trailer-")),
      ),
    });
    return { ours: view(ours), theirs: view(theirs) };
  }

  it.each([
    ["a success", ECHO, { text: "same" }],
    ["a refusal by the service", ECHO, { text: "refuse" }],
    ["a refusal with details", ECHO, { text: "details" }],
    ["a bug upstream, masked", ECHO, { text: "boom" }],
    ["a validation failure at the service", "/medmesh.meshtest.v1.MeshTestService/Wait", { ms: -1 }],
  ])("%s", async (_name, path, json) => {
    const { ours, theirs } = await both(path, json);
    expect(ours).toEqual(theirs);
  });

  it("an unauthenticated call", async () => {
    const { ours, theirs } = await both(GET_ME, {});
    expect(ours.status).toBe(401);
    expect(ours).toEqual(theirs);
  });

  it("the echo's bytes as binary are the same as from JSON", async () => {
    const res = await h1(
      ECHO,
      { "content-type": "application/proto" },
      Buffer.from(toBinary(EchoRequestSchema, create(EchoRequestSchema, { text: "bin" }))),
    );
    expect(res.headers["content-type"]).toBe("application/proto");
    expect(fromBinary(EchoResponseSchema, res.body).text).toBe("bin");
  });
});
