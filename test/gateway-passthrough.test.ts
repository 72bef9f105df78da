import { execFile } from "node:child_process";
import http2 from "node:http2";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ChatRequestSchema,
  ChatResponseSchema,
  CountRequestSchema,
  CountResponseSchema,
  EchoRequestSchema,
  EchoResponseSchema,
  MeshTestService,
  WaitRequestSchema,
} from "../gen/medmesh/meshtest/v1/meshtest_pb.js";
import {
  CreateDocumentRequestSchema,
  DocumentService,
  DocumentType,
} from "../gen/medmesh/documents/v1/documents_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { meshInterceptors } from "../platform/grpc/interceptors/index.js";
import { register, startGrpcServer, type RunningGrpcServer } from "../platform/grpc/server.js";
import { startGateway } from "../gateway/main.js";
import { startDocuments } from "../services/documents/main.js";
import { backends, testEnv } from "./support/backends.js";
import { startTestIdentity, type TestIdentity } from "./support/identity.js";
import { meshTestService, type Observed } from "./support/meshtest-service.js";

// The gateway passes gRPC and gRPC-web calls through frame by frame (gateway/passthrough.ts).
// Every call below is made by a client that shares no code with the gateway: raw node:http2
// streams written frame by frame, or curl over HTTP/1.1. Each test says what the gateway does
// with the input it is given. No timing is asserted: waits are bounded by the test timeout.

const ECHO = "/medmesh.meshtest.v1.MeshTestService/Echo";
const COUNT = "/medmesh.meshtest.v1.MeshTestService/Count";
const WAIT = "/medmesh.meshtest.v1.MeshTestService/Wait";
const GET_DOCUMENT = "/medmesh.documents.v1.DocumentService/GetDocument";
const CREATE_DOCUMENT = "/medmesh.documents.v1.DocumentService/CreateDocument";
const MAX_BODY = 64 * 1024;
const CONSOLE = "http://console.example";

function frame(payload: Uint8Array, flags = 0): Buffer {
  const prefix = Buffer.alloc(5);
  prefix[0] = flags;
  prefix.writeUInt32BE(payload.length, 1);
  return Buffer.concat([prefix, payload]);
}
const echo = (text: string) => frame(toBinary(EchoRequestSchema, create(EchoRequestSchema, { text })));
const count = (n: number, intervalMs: number) =>
  frame(toBinary(CountRequestSchema, create(CountRequestSchema, { count: n, intervalMs })));

/** The frames of a gRPC or gRPC-web body: messages, and the gRPC-web trailer frame as text. */
function framesOf(body: Buffer): { messages: Buffer[]; trailer?: string } {
  const messages: Buffer[] = [];
  let trailer: string | undefined;
  for (let at = 0; at + 5 <= body.length;) {
    const len = body.readUInt32BE(at + 1);
    const payload = body.subarray(at + 5, at + 5 + len);
    if (body[at]! & 0x80) trailer = payload.toString("latin1");
    else messages.push(payload);
    at += 5 + len;
  }
  return { messages, trailer };
}

let identity: TestIdentity;
let meshtest: RunningGrpcServer;
const observed: Observed = { cancelledStreams: 0, waitsCancelled: 0 };
let port: number;
let stops: Array<() => Promise<void>> = [];

beforeAll(async () => {
  identity = await startTestIdentity();
  const [backend] = backends();
  const docs = await startDocuments({ ...testEnv, ...backend!.env, IDENTITY_TARGET: identity.target });
  meshtest = await startGrpcServer({
    name: "meshtest",
    host: "127.0.0.1",
    port: 0,
    services: [register(MeshTestService, meshTestService(observed))],
    interceptors: meshInterceptors({ component: "meshtest" }),
    maxMessageBytes: 1024 * 1024,
  });
  const gw = await startGateway(
    {
      ...testEnv,
      IDENTITY_TARGET: identity.target,
      DOCUMENTS_TARGET: `127.0.0.1:${docs.port}`,
      MESHTEST_TARGET: `127.0.0.1:${meshtest.port}`,
      GATEWAY_MAX_BODY_BYTES: String(MAX_BODY),
      CORS_ALLOWED_ORIGINS: CONSOLE,
    },
    { services: [MeshTestService, DocumentService] },
  );
  port = gw.port;
  stops = [gw.stop, () => meshtest.shutdown(1_000), docs.stop, () => identity.stop()];
});

afterAll(async () => {
  for (const stop of stops) await stop();
});

interface Outcome {
  headers: http2.IncomingHttpHeaders;
  /** The trailers, or the headers of a trailers-only answer. */
  trailers: http2.IncomingHttpHeaders;
  messages: Buffer[];
  code: number;
  message: string;
  rstCode: number;
}

/**
 * One gRPC call over its own raw HTTP/2 connection. `during` runs once the first response
 * message has arrived (to cancel, or to cut the upstream).
 */
function rawCall(
  target: number,
  path: string,
  body: Buffer,
  headers: Record<string, string> = {},
  during?: (stream: http2.ClientHttp2Stream) => void,
): Promise<Outcome> {
  return new Promise((resolve) => {
    const session = http2.connect(`http://127.0.0.1:${target}`);
    session.on("error", () => {});
    const stream = session.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
      ...headers,
    });
    let head: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    stream.on("response", (h) => {
      head = h;
      if (h["grpc-status"] !== undefined) trailers = h;
    });
    stream.on("trailers", (t) => (trailers = t));
    stream.on("data", (d: Buffer) => {
      chunks.push(d);
      if (during && framesOf(Buffer.concat(chunks)).messages.length > 0) {
        during(stream);
        during = undefined;
      }
    });
    stream.on("error", () => {});
    stream.on("close", () => {
      session.close();
      resolve({
        headers: head,
        trailers,
        messages: framesOf(Buffer.concat(chunks)).messages,
        code: trailers["grpc-status"] === undefined ? -1 : Number(trailers["grpc-status"]),
        message: decodeURIComponent(String(trailers["grpc-message"] ?? "")),
        rstCode: stream.rstCode ?? 0,
      });
    });
    stream.end(body);
  });
}

const run = promisify(execFile);

/** curl over HTTP/1.1 with a body from stdin: the raw response body. */
async function curl(path: string, contentType: string, body: Buffer | string): Promise<Buffer> {
  const child = execFile("curl", [
    "-s",
    "--http1.1",
    "-X",
    "POST",
    "-H",
    `content-type: ${contentType}`,
    "--data-binary",
    "@-",
    "-o",
    "-",
    `http://127.0.0.1:${port}${path}`,
  ]);
  const out: Buffer[] = [];
  child.stdout!.setEncoding("latin1");
  child.stdout!.on("data", (d: string) => out.push(Buffer.from(d, "latin1")));
  child.stdin!.end(body);
  await new Promise((r, j) => child.once("close", r).once("error", j));
  return Buffer.concat(out);
}

describe("access and rate class, from the method descriptor", () => {
  it("a method for signed-in callers, called without a token, is unauthenticated and never forwarded", async () => {
    const r = await rawCall(port, GET_DOCUMENT, frame(Buffer.from([0x0a, 0x01, 0x78])));
    expect(r.code).toBe(Code.Unauthenticated);
    expect(r.message).toBe("sign in to call this method");
  });

  it("a role the contract does not list is permission_denied, naming the role and the method", async () => {
    const { authorization } = await identity.bearer("student");
    const body = frame(
      toBinary(
        CreateDocumentRequestSchema,
        create(CreateDocumentRequestSchema, { document: { title: "x", documentType: DocumentType.OTHER } }),
      ),
    );
    const r = await rawCall(port, CREATE_DOCUMENT, body, { authorization });
    expect(r.code).toBe(Code.PermissionDenied);
    expect(r.message).toBe("the student role may not call CreateDocument");
  });

  it("a forged token on a signed-in method is unauthenticated with a sentence", async () => {
    const r = await rawCall(port, GET_DOCUMENT, frame(Buffer.from([0x0a, 0x01, 0x78])), {
      authorization: "Bearer not.a.token",
    });
    expect(r.code).toBe(Code.Unauthenticated);
    expect(r.message).toMatch(/^invalid access token/);
  });
});

describe("frames", () => {
  it("a frame whose length prefix is over GATEWAY_MAX_BODY_BYTES is resource_exhausted before it is forwarded", async () => {
    const r = await rawCall(port, ECHO, frame(Buffer.alloc(MAX_BODY + 1, 0x61)));
    expect(r.code).toBe(Code.ResourceExhausted);
    expect(r.message).toBe(
      `a request message of ${MAX_BODY + 1} bytes is larger than the ${MAX_BODY} bytes the gateway accepts`,
    );
  });

  it("garbage bytes in a whole frame reach the service, whose invalid_argument comes back", async () => {
    const r = await rawCall(port, ECHO, frame(Buffer.from([0xff, 0xff, 0xff, 0xff])));
    expect(r.code).toBe(Code.InvalidArgument);
    expect(r.message).not.toBe("");
  });

  it("a body that ends inside a frame is invalid_argument at the gateway: the service never sees half a message", async () => {
    const whole = echo("cut short");
    const r = await rawCall(port, ECHO, whole.subarray(0, whole.length - 3));
    expect(r.code).toBe(Code.InvalidArgument);
    expect(r.message).toBe("the request ends inside a message: its length prefix announces more bytes than were sent");
  });

  it("a compressed frame with grpc-encoding gzip goes through as it is, and the answer says so", async () => {
    const { gzipSync } = await import("node:zlib");
    const payload = toBinary(EchoRequestSchema, create(EchoRequestSchema, { text: "squeezed" }));
    const r = await rawCall(port, ECHO, frame(gzipSync(payload), 0x01), {
      "grpc-encoding": "gzip",
      "grpc-accept-encoding": "identity",
    });
    expect(r.code).toBe(0);
    expect(fromBinary(EchoResponseSchema, r.messages[0]!.subarray(0)).text).toBe("squeezed");
  });
});

describe("deadlines and cancellation", () => {
  it("a deadline that passes while the service works is deadline_exceeded with the gateway's sentence", async () => {
    const body = frame(toBinary(WaitRequestSchema, create(WaitRequestSchema, { ms: 30_000 })));
    const r = await rawCall(port, WAIT, body, { "grpc-timeout": "300m" });
    expect(r.code).toBe(Code.DeadlineExceeded);
    expect(r.message).toBe("the deadline expired before the call finished");
  });

  it("a client that resets a server stream cancels the service's stream (meshtest counts it)", async () => {
    const before = observed.cancelledStreams;
    const r = await rawCall(port, COUNT, count(1000, 50), {}, (stream) => stream.close(http2.constants.NGHTTP2_CANCEL));
    expect(r.messages.length).toBeGreaterThan(0);
    expect(r.rstCode).toBe(http2.constants.NGHTTP2_CANCEL);
    await vi.waitFor(() => expect(observed.cancelledStreams).toBe(before + 1), { timeout: 5_000, interval: 20 });
  });
});

describe("a stream the service ends while the client is still sending", () => {
  it("reaches the client at once with the service's status, without waiting for the client to half-close", async () => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", () => {});
    try {
      const stream = session.request({
        ":method": "POST",
        ":path": "/medmesh.meshtest.v1.MeshTestService/Chat",
        "content-type": "application/grpc",
        te: "trailers",
        // Long enough that waiting for it would show as deadline_exceeded instead of the service's status.
        "grpc-timeout": "10S",
      });
      stream.on("error", () => {});
      const chunks: Buffer[] = [];
      stream.on("data", (d: Buffer) => chunks.push(d));
      const trailers = new Promise<http2.IncomingHttpHeaders>((resolve) => {
        stream.on("response", (h) => h["grpc-status"] !== undefined && resolve(h));
        stream.on("trailers", resolve);
      });
      const chat = (text: string) => frame(toBinary(ChatRequestSchema, create(ChatRequestSchema, { text })));
      // The second message breaks the contract (text min_len 1): the service ends the call. The
      // request side is never ended, as a device that keeps its stream open would not.
      stream.write(chat("hi"));
      stream.write(chat(""));
      const t = await trailers;
      expect(t["grpc-status"]).toBe(String(Code.InvalidArgument));
      expect(decodeURIComponent(String(t["grpc-message"]))).toMatch(/text/);
      expect(framesOf(Buffer.concat(chunks)).messages.map((m) => fromBinary(ChatResponseSchema, m).text)).toEqual([
        "HI",
      ]);
    } finally {
      session.destroy();
    }
  });
});

/** A TCP relay in front of meshtest whose connections the test can cut. */
async function relay(targetPort: number) {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => sockets.delete(s));
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    cut: () => sockets.forEach((s) => s.destroy()),
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const p = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return p;
}

describe("an upstream that is not there", () => {
  it("unreachable: unavailable with a plain sentence, no address; grpc-js reads it without %3B", async () => {
    const gw = await startGateway(
      { ...testEnv, IDENTITY_TARGET: identity.target, MESHTEST_TARGET: `127.0.0.1:${await closedPort()}` },
      { services: [MeshTestService] },
    );
    try {
      const r = await rawCall(gw.port, ECHO, echo("anyone?"));
      expect(r.code).toBe(Code.Unavailable);
      expect(r.message).toBe("the service is unavailable right now; try again shortly");
      // grpc-js decodes grpc-message by the gRPC spec; a ";" escaped as %3B would stay escaped.
      const client = createMeshClient(MeshTestService, `127.0.0.1:${gw.port}`);
      const err = await client.echo({ text: "anyone?" }, { timeoutMs: 5_000 }).catch((e: unknown) => e);
      client.close();
      expect(ConnectError.from(err).rawMessage).toBe("the service is unavailable right now; try again shortly");
    } finally {
      await gw.stop();
    }
  });

  it("killed mid-stream: the stream ends unavailable, and the next call gets a fresh connection", async () => {
    const cuttable = await relay(meshtest.port);
    const gw = await startGateway(
      { ...testEnv, IDENTITY_TARGET: identity.target, MESHTEST_TARGET: `127.0.0.1:${cuttable.port}` },
      { services: [MeshTestService] },
    );
    try {
      const r = await rawCall(gw.port, COUNT, count(1000, 50), {}, () => cuttable.cut());
      expect(r.messages.length).toBeGreaterThan(0);
      expect(r.code).toBe(Code.Unavailable);
      expect(r.message).toBe("the service is unavailable right now; try again shortly");
      const again = await rawCall(gw.port, ECHO, echo("back"));
      expect(again.code).toBe(0);
      expect(fromBinary(EchoResponseSchema, again.messages[0]!).text).toBe("back");
    } finally {
      await gw.stop();
      await cuttable.close();
    }
  });
});

describe("gRPC-web over HTTP/1.1 (curl)", () => {
  it("the status travels in a trailer frame (0x80) at the end of the body", async () => {
    const ok = framesOf(await curl(ECHO, "application/grpc-web+proto", echo("web")));
    expect(fromBinary(EchoResponseSchema, ok.messages[0]!).text).toBe("web");
    expect(ok.trailer).toMatch(/^grpc-status: 0\r\n/m);

    // The service's own refusal, its code and words, arrive in the trailer frame too.
    const refused = framesOf(await curl(ECHO, "application/grpc-web+proto", echo("refuse")));
    expect(refused.messages).toEqual([]);
    expect(refused.trailer).toMatch(/^grpc-status: 9\r\n/m);
    // As the service percent-encoded it (grpc-js writes spaces as %20); the gateway does not re-encode it.
    const said = /^grpc-message: (.*)\r\n/m.exec(refused.trailer ?? "")?.[1] ?? "";
    expect(decodeURIComponent(said)).toBe("refused on purpose");
  });

  it("grpc-web-text: a base64 request is answered in base64, messages and trailer frame", async () => {
    const text = (await curl(COUNT, "application/grpc-web-text", count(3, 0).toString("base64"))).toString("latin1");
    expect(text).toMatch(/^[A-Za-z0-9+/=]+$/);
    // Each piece is padded on its own; decode piece by piece, as grpc-web clients do.
    const raw = Buffer.concat((text.match(/[^=]+=*/g) ?? []).map((p) => Buffer.from(p, "base64")));
    const { messages, trailer } = framesOf(raw);
    expect(messages.map((m) => fromBinary(CountResponseSchema, m).n)).toEqual([1, 2, 3]);
    expect(trailer).toMatch(/^grpc-status: 0\r\n/m);
  });

  it("grpc-web-text that is not base64 is invalid_argument, in a base64 trailer frame", async () => {
    const raw = Buffer.from((await curl(ECHO, "application/grpc-web-text", "%%% not base64 %%%")).toString(), "base64");
    expect(framesOf(raw).trailer).toMatch(/^grpc-status: 3\r\n/m);
  });
});

describe("plain gRPC: taken off the HTTP/2 stream, or through node's request objects when CORS applies", () => {
  it("with an allowed Origin the answers are the same as without, plus the CORS headers", async () => {
    const bare = await rawCall(port, ECHO, echo("both"));
    const cors = await rawCall(port, ECHO, echo("both"), { origin: CONSOLE });
    for (const r of [bare, cors]) {
      expect(r.code).toBe(0);
      expect(fromBinary(EchoResponseSchema, r.messages[0]!).text).toBe("both");
    }
    expect(bare.headers["access-control-allow-origin"]).toBeUndefined();
    expect(cors.headers["access-control-allow-origin"]).toBe(CONSOLE);

    // A refusal answered trailers-only carries the CORS headers in its one header block.
    const doc = frame(Buffer.from([0x0a, 0x01, 0x78]));
    const refusedBare = await rawCall(port, GET_DOCUMENT, doc);
    const refusedCors = await rawCall(port, GET_DOCUMENT, doc, { origin: CONSOLE });
    for (const r of [refusedBare, refusedCors]) {
      expect(r.code).toBe(Code.Unauthenticated);
      expect(r.message).toBe("sign in to call this method");
    }
    expect(refusedBare.headers["access-control-allow-origin"]).toBeUndefined();
    expect(refusedCors.headers["access-control-allow-origin"]).toBe(CONSOLE);
  });
});

describe("gRPC-web over HTTP/2", () => {
  it("the status travels in the trailer frame of the body, not in HTTP/2 trailers", async () => {
    const r = await rawCall(port, ECHO, echo("refuse"), { "content-type": "application/grpc-web+proto" });
    expect(r.headers["content-type"]).toBe("application/grpc-web+proto");
    expect(r.trailers).toEqual({});
    // rawCall reads the 0x80 frame as no message; the raw body is checked frame by frame here.
    const again = await new Promise<Buffer>((resolve) => {
      const session = http2.connect(`http://127.0.0.1:${port}`);
      const stream = session.request({
        ":method": "POST",
        ":path": ECHO,
        "content-type": "application/grpc-web+proto",
      });
      const chunks: Buffer[] = [];
      stream.on("data", (d: Buffer) => chunks.push(d));
      stream.on("close", () => {
        session.close();
        resolve(Buffer.concat(chunks));
      });
      stream.end(echo("refuse"));
    });
    const { messages, trailer } = framesOf(again);
    expect(messages).toEqual([]);
    expect(trailer).toMatch(/^grpc-status: 9\r\n/m);
  });
});

describe("one port, the socket itself under HTTP/2", () => {
  it("a client whose preface arrives a few bytes at a time is served over HTTP/2", async () => {
    // A relay that passes the client's first 60 bytes on 3 at a time, then everything as it comes.
    const dribble = net.createServer((client) => {
      const gw = net.connect(port, "127.0.0.1");
      let passed = 0;
      let queue = Promise.resolve();
      client.on("data", (d: Buffer) => {
        queue = queue.then(async () => {
          for (let i = 0; i < d.length;) {
            const n = passed < 60 ? 3 : d.length - i;
            gw.write(d.subarray(i, i + n));
            passed += n;
            i += n;
            if (passed < 60) await sleep(5);
          }
        });
      });
      gw.pipe(client);
      for (const s of [client, gw]) s.on("error", () => {});
      client.on("close", () => gw.destroy());
    });
    await new Promise<void>((r) => dribble.listen(0, "127.0.0.1", () => r()));
    try {
      const r = await rawCall((dribble.address() as net.AddressInfo).port, ECHO, echo("piecemeal"));
      expect(r.code).toBe(0);
      expect(fromBinary(EchoResponseSchema, r.messages[0]!).text).toBe("piecemeal");
    } finally {
      await new Promise((r) => dribble.close(r));
    }
  });

  it("curl --http2-prior-knowledge speaks h2c on the same port", async () => {
    const { stdout } = await run("curl", [
      "-s",
      "--http2-prior-knowledge",
      "-o",
      "/dev/null",
      "-w",
      "%{http_version} %{http_code}",
      `http://127.0.0.1:${port}/healthz`,
    ]);
    expect(stdout).toBe("2 200");
  });
});
