import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  EchoRequestSchema,
  MeshTestService,
  SumRequestSchema,
  WaitRequestSchema,
} from "../gen/medmesh/meshtest/v1/meshtest_pb.js";
import { DocumentService, DocumentType } from "../gen/medmesh/documents/v1/documents_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { meshInterceptors } from "../platform/grpc/interceptors/index.js";
import { register, startGrpcServer, type RunningGrpcServer } from "../platform/grpc/server.js";
import { ConfigError } from "../platform/config/env.js";
import { startGateway } from "../gateway/main.js";
import { startDocuments } from "../services/documents/main.js";
import { backends, testEnv } from "./support/backends.js";
import { startTestIdentity, type TestIdentity } from "./support/identity.js";
import { meshTestService } from "./support/meshtest-service.js";

// Issue 10, item 8: what one slow or greedy client can hold of the gateway. The limits are set
// small here so each abuse is cut quickly; every wait below is bounded by a test timeout, and
// nothing asserts how fast the gateway is.

const HEADERS_TIMEOUT_MS = 400;
const REQUEST_TIMEOUT_MS = 800;
const IDLE_TIMEOUT_MS = 800;
const MAX_STREAMS = 4;
/** Longer than every limit above together: what outlives it was not cut by any of them. */
const OUTLIVE_MS = 2_500;

const ECHO = "/medmesh.meshtest.v1.MeshTestService/Echo";
const WAIT = "/medmesh.meshtest.v1.MeshTestService/Wait";
const SUM = "/medmesh.meshtest.v1.MeshTestService/Sum";
const WATCH = "/medmesh.documents.v1.DocumentService/WatchDocument";

function frame(payload: Uint8Array): Buffer {
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(payload.length, 1);
  return Buffer.concat([prefix, payload]);
}

let identity: TestIdentity;
let meshtest: RunningGrpcServer;
let stopDocuments: () => Promise<void>;
let stopGateway: () => Promise<void>;
let port: number;
let documentId: string;
let authorization: string;

beforeAll(async () => {
  identity = await startTestIdentity();
  const [backend] = backends();
  const docs = await startDocuments({ ...testEnv, ...backend!.env, IDENTITY_TARGET: identity.target });
  stopDocuments = docs.stop;
  meshtest = await startGrpcServer({
    name: "meshtest",
    host: "127.0.0.1",
    port: 0,
    services: [register(MeshTestService, meshTestService({ cancelledStreams: 0, waitsCancelled: 0 }))],
    interceptors: meshInterceptors({ component: "meshtest" }),
    maxMessageBytes: 1024 * 1024,
  });
  const gw = await startGateway(
    {
      ...testEnv,
      IDENTITY_TARGET: identity.target,
      DOCUMENTS_TARGET: `127.0.0.1:${docs.port}`,
      MESHTEST_TARGET: `127.0.0.1:${meshtest.port}`,
      GATEWAY_HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS),
      GATEWAY_REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
      GATEWAY_IDLE_TIMEOUT_MS: String(IDLE_TIMEOUT_MS),
      GATEWAY_MAX_STREAMS_PER_CONNECTION: String(MAX_STREAMS),
      GATEWAY_MAX_HEADER_BYTES: "8KiB",
    },
    { services: [MeshTestService, DocumentService] },
  );
  stopGateway = gw.stop;
  port = gw.port;
  // A document that stays UPLOADED (nothing processes it here): a watch on it stays open.
  ({ authorization } = await identity.bearer("doctor"));
  const client = createMeshClient(DocumentService, `127.0.0.1:${docs.port}`, {
    headers: { authorization },
    defaultTimeoutMs: 20_000,
  });
  const { document } = await client.upload(
    (async function* () {
      yield {
        part: {
          case: "header" as const,
          value: {
            document: { title: "Watched", documentType: DocumentType.OTHER },
            filename: "notes.txt",
            declaredMimeType: "text/plain",
          } as never,
        },
      };
      yield { part: { case: "chunk" as const, value: Buffer.from("Aspirin and stroke.\n".repeat(20)) } };
    })(),
  );
  documentId = document!.id;
  client.close();
});

afterAll(async () => {
  await stopGateway?.();
  await meshtest?.shutdown(1_000);
  await stopDocuments?.();
  await identity?.stop();
});

// ---- clients ----

/** Resolves when the socket is closed, with what the gateway wrote to it first. */
function closed(socket: net.Socket): Promise<string> {
  const got: Buffer[] = [];
  socket.on("data", (d: Buffer) => got.push(d));
  socket.on("error", () => {});
  return new Promise((resolve) => socket.once("close", () => resolve(Buffer.concat(got).toString("latin1"))));
}

async function rawSocket(): Promise<net.Socket> {
  const socket = net.connect(port, "127.0.0.1");
  await new Promise((r, j) => socket.once("connect", r).once("error", j));
  return socket;
}

interface H2Outcome {
  status?: number;
  grpcStatus?: string;
  rstCode?: number;
}

/** One gRPC call on `session`: its status, or the code of the reset that ended it. */
function grpcCall(session: http2.ClientHttp2Session, path: string, body: Buffer): Promise<H2Outcome> {
  return new Promise((resolve) => {
    const out: H2Outcome = {};
    const stream = session.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
    });
    stream.on("response", (h) => {
      out.status = Number(h[":status"]);
      if (h["grpc-status"] !== undefined) out.grpcStatus = String(h["grpc-status"]);
    });
    stream.on("trailers", (t) => (out.grpcStatus = String(t["grpc-status"])));
    stream.on("error", () => {});
    stream.resume();
    stream.on("close", () => resolve({ ...out, rstCode: stream.rstCode }));
    stream.end(body);
  });
}

const echo = frame(toBinary(EchoRequestSchema, create(EchoRequestSchema, { text: "still here" })));

afterEach(async () => {
  // Whatever the last client did, the next one is answered, over either protocol.
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on("error", () => {});
  try {
    expect((await grpcCall(session, ECHO, echo)).grpcStatus).toBe("0");
  } finally {
    session.close();
  }
  const res = await fetch(`http://127.0.0.1:${port}${ECHO}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ text: "still here" }),
    signal: AbortSignal.timeout(10_000),
  });
  expect(await res.json()).toEqual({ text: "still here" });
});

describe("slow clients are cut", () => {
  it("a connection that sends nothing is closed", async () => {
    const socket = await rawSocket();
    expect(await closed(socket)).toBe("");
  });

  it("a connection that dribbles the HTTP/2 preface is closed", async () => {
    const socket = await rawSocket();
    const done = closed(socket);
    const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n";
    // One byte at a time, never the last four.
    for (let i = 0; i < preface.length && !socket.destroyed; i++) {
      socket.write(preface[i]!);
      await sleep(HEADERS_TIMEOUT_MS / 8);
    }
    expect(await done).toBe("");
  });

  it("an HTTP/2 connection that opens no stream is closed with GOAWAY", async () => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", () => {});
    const goaway = new Promise<number>((r) => session.once("goaway", (code) => r(code)));
    await new Promise((r) => session.once("close", r));
    expect(await goaway).toBe(http2.constants.NGHTTP2_NO_ERROR);
  });

  it("HTTP/1.1 headers that stall are answered 408 and the connection closed", async () => {
    const socket = await rawSocket();
    const done = closed(socket);
    socket.write(`POST ${ECHO} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n`);
    expect(await done).toMatch(/^HTTP\/1\.1 408 /);
  });

  it("an HTTP/1.1 body that stalls half-way is answered 408 and the connection closed", async () => {
    const socket = await rawSocket();
    const done = closed(socket);
    socket.write(
      `POST ${ECHO} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"text": "half`,
    );
    expect(await done).toMatch(/^HTTP\/1\.1 408 /);
  });

  it("an HTTP/2 request body that stalls half-way is reset", async () => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", () => {});
    try {
      const stream = session.request({
        ":method": "POST",
        ":path": SUM,
        "content-type": "application/grpc",
        te: "trailers",
      });
      stream.on("error", () => {});
      stream.resume();
      stream.write(frame(toBinary(SumRequestSchema, create(SumRequestSchema, { value: 1n }))));
      await new Promise((r) => stream.once("close", r));
      expect(stream.rstCode).toBe(http2.constants.NGHTTP2_CANCEL);
    } finally {
      session.close();
    }
  });

  it("oversized headers are refused over both protocols", async () => {
    const big = "x".repeat(10 * 1024);
    const res = await new Promise<number>((resolve, reject) => {
      const req = http.request(
        { host: "127.0.0.1", port, path: ECHO, method: "POST", headers: { "x-big": big }, agent: false },
        (r) => {
          r.resume();
          resolve(r.statusCode ?? 0);
        },
      );
      req.on("error", reject);
      req.end("{}");
    });
    expect(res).toBe(431);
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", () => {});
    try {
      // Sent once the gateway's SETTINGS are acknowledged: before, the default limit applies.
      await new Promise((r) => session.once("remoteSettings", r));
      const outcome = await new Promise<H2Outcome>((resolve) => {
        const stream = session.request({
          ":method": "POST",
          ":path": ECHO,
          "content-type": "application/grpc",
          "x-big": big,
        });
        stream.on("error", () => {});
        stream.on("response", (h) => resolve({ status: Number(h[":status"]) }));
        stream.on("close", () => resolve({ rstCode: stream.rstCode }));
        stream.end(echo);
      });
      expect(outcome.rstCode ?? outcome.status).not.toBe(200);
      expect(outcome.rstCode).toBeGreaterThan(0);
    } finally {
      session.destroy();
    }
  });
});

describe("greedy clients are capped", () => {
  it(`streams beyond ${MAX_STREAMS} on one connection are refused with REFUSED_STREAM; the others are answered`, async () => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", () => {});
    try {
      // Opened at once, before the gateway's SETTINGS arrive: a client that does not wait for
      // the limit it was told (node's client would queue them once it knows).
      const wait = frame(toBinary(WaitRequestSchema, create(WaitRequestSchema, { ms: 1_000 })));
      const outcomes = await Promise.all(Array.from({ length: MAX_STREAMS + 3 }, () => grpcCall(session, WAIT, wait)));
      const answered = outcomes.filter((o) => o.grpcStatus === "0");
      const refused = outcomes.filter((o) => o.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM);
      expect({ answered: answered.length, refused: refused.length }).toEqual({ answered: MAX_STREAMS, refused: 3 });
    } finally {
      session.close();
    }
  });

  it("a client that keeps opening streams beyond the cap loses its connection", async () => {
    // Raw frames: node's own client would wait for the cap it is told. 300 requests at once, each
    // HEADERS without END_STREAM (so it stays open), never acknowledging the gateway's SETTINGS.
    const h2frame = (type: number, flags: number, id: number, payload: Buffer) => {
      const head = Buffer.alloc(9);
      head.writeUIntBE(payload.length, 0, 3);
      head[3] = type;
      head[4] = flags;
      head.writeUInt32BE(id, 5);
      return Buffer.concat([head, payload]);
    };
    // HPACK, static table only: :method POST, :scheme http, :path /, :authority "a".
    const headers = Buffer.from([0x83, 0x86, 0x84, 0x41, 0x01, 0x61]);
    const socket = await rawSocket();
    const done = closed(socket);
    socket.write(
      Buffer.concat([
        Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        h2frame(4, 0, 0, Buffer.alloc(0)),
        ...Array.from({ length: 300 }, (_, i) => h2frame(1, 0x4, 1 + 2 * i, headers)),
      ]),
    );
    const got = Buffer.from(await done, "latin1");
    const frames: Array<{ type: number; code: number }> = [];
    // What the gateway wrote before closing: RST_STREAM frames and their codes.
    for (let at = 0; at + 9 <= got.length; at += 9 + got.readUIntBE(at, 3)) {
      const type = got[at + 3]!;
      if (type === 3) frames.push({ type, code: got.readUInt32BE(at + 9) });
    }
    // Refused one by one up to the session's allowance (100), then the connection is gone: the
    // rest were never answered.
    const refused = frames.filter((f) => f.type === 3 && f.code === http2.constants.NGHTTP2_REFUSED_STREAM);
    expect(refused.length).toBeGreaterThan(0);
    expect(refused.length).toBeLessThan(300 - MAX_STREAMS);
  });
});

describe("long responses are not cut", () => {
  it("a WatchDocument over Connect streaming (HTTP/1.1) outlives every timeout", async () => {
    const events: string[] = [];
    const req = http.request({
      host: "127.0.0.1",
      port,
      path: WATCH,
      method: "POST",
      agent: false,
      headers: { "content-type": "application/connect+json", authorization },
    });
    req.on("error", () => {});
    const response = new Promise<http.IncomingMessage>((r) => req.once("response", r));
    req.end(frame(Buffer.from(JSON.stringify({ id: documentId }))));
    const res = await response;
    expect(res.statusCode).toBe(200);
    const first = new Promise<Buffer>((r) => res.once("data", r));
    res.on("end", () => events.push("end"));
    res.on("close", () => events.push("close"));
    req.socket!.on("close", () => events.push("socket closed"));
    expect((await first).toString()).toMatch(/UPLOADED/);
    await sleep(OUTLIVE_MS);
    expect(events).toEqual([]);
    req.destroy();
  });

  it("a WatchDocument over gRPC (HTTP/2) keeps its quiet connection open past the idle timeout", async () => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", () => {});
    const events: string[] = [];
    session.on("goaway", () => events.push("goaway"));
    session.on("close", () => events.push("session closed"));
    try {
      const stream = session.request({
        ":method": "POST",
        ":path": WATCH,
        "content-type": "application/grpc",
        te: "trailers",
        authorization,
      });
      stream.on("error", () => {});
      stream.on("close", () => events.push("stream closed"));
      const first = new Promise<Buffer>((r) => stream.once("data", r));
      stream.end(frame(Buffer.from([0x0a, documentId.length, ...Buffer.from(documentId)])));
      expect((await first).length).toBeGreaterThan(5);
      await sleep(OUTLIVE_MS);
      expect(events).toEqual([]);
      stream.close(http2.constants.NGHTTP2_CANCEL);
    } finally {
      session.close();
    }
  });
});

it("the gateway refuses a headers timeout longer than the request timeout", async () => {
  const err = await startGateway({
    ...testEnv,
    GATEWAY_HEADERS_TIMEOUT_MS: "5000",
    GATEWAY_REQUEST_TIMEOUT_MS: "1000",
  }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(ConfigError);
  expect((err as Error).message).toMatch(/GATEWAY_HEADERS_TIMEOUT_MS .* must not exceed GATEWAY_REQUEST_TIMEOUT_MS/);
});
