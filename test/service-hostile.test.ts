import http2 from "node:http2";
import net from "node:net";
import zlib from "node:zlib";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { HealthCheckRequestSchema, HealthCheckResponseSchema } from "../gen/grpc/health/v1/health_pb.js";
import { DocumentType, UploadRequestSchema } from "../gen/medmesh/documents/v1/documents_pb.js";
import {
  CountRequestSchema,
  EchoRequestSchema,
  EchoResponseSchema,
  SumRequestSchema,
  WaitRequestSchema,
} from "../gen/medmesh/meshtest/v1/meshtest_pb.js";
import { grpcTarget, spawnService, type ChildService } from "./support/child-service.js";
import { startTestIdentity, type TestIdentity } from "./support/identity.js";

// A service reached directly, with no gateway in front, by clients we did not write: node:http2
// with bytes built by hand, HTTP/2 frames written onto a bare socket (for the headers node:http2
// refuses to send), and plain TCP garbage. Two services run as child processes, so a crash is an
// exit this test sees: the conformance service (every call kind) and the real documents service
// (on embedded PGlite, tokens checked against a real identity service).
//
// Every request is bounded by a timer of its own: a server that never answers is reported as
// "no answer", which no expectation accepts. The bound says "answered at all", not "fast".
//
// Some inputs are answered by node:http2 before any of our code runs (connection-specific headers,
// header lists past node's limits, bytes that are not HTTP/2). platform/grpc/h2-transport.ts
// answers the rest itself: unknown paths, content types, framing, compression, grpc-timeout
// syntax, message counts on unary methods, a message that is not the method's type, a frame cut
// short at the end of the request, a request that never arrives, and a status stuck behind
// bytes the client will not read. Each choice is pinned here with a note.

const ANSWER_BOUND_MS = 10_000;
const MESHTEST = "medmesh.meshtest.v1.MeshTestService";
const ECHO = `/${MESHTEST}/Echo`;
const SUM = `/${MESHTEST}/Sum`;
const COUNT = `/${MESHTEST}/Count`;
const WAIT = `/${MESHTEST}/Wait`;
const CHECK = "/grpc.health.v1.Health/Check";
const UPLOAD = "/medmesh.documents.v1.DocumentService/Upload";
const GET_DOCUMENT = "/medmesh.documents.v1.DocumentService/GetDocument";
/** meshtest-main.ts sets the conformance service's limit to 1 MiB; documents keeps the default 8 MiB. */
const MESHTEST_MAX_MESSAGE = 1024 * 1024;
const DOCUMENTS_MAX_MESSAGE = 8 * 1024 * 1024;
/** The conformance service closes connections idle this long (documents keeps the 5 min default). */
const MESHTEST_IDLE_MS = 3_000;

let meshtest: ChildService;
let documents: ChildService;
let identity: TestIdentity;
let bearer: string;
const addr = (svc: ChildService, name: string) => grpcTarget(svc.endpoints[name]!);
let inputsTried = 0;

beforeAll(async () => {
  identity = await startTestIdentity();
  [meshtest, documents] = await Promise.all([
    spawnService("test/support/meshtest-main.ts", { MESHTEST_MAX_CONNECTION_IDLE_MS: String(MESHTEST_IDLE_MS) }, [
      "meshtest",
    ]),
    spawnService(
      "services/documents/main.ts",
      { DOCUMENTS_PORT: "0", IDENTITY_TARGET: identity.target, MEDMESH_DATA_DIR: "memory://", LOG_LEVEL: "warn" },
      ["documents"],
    ),
  ]);
  bearer = (await identity.bearer("doctor")).authorization;
});

afterAll(async () => {
  await meshtest?.stop();
  await documents?.stop();
  await identity?.stop();
  // Not an assertion: how much was thrown at the services, for whoever reads the run.
  console.info(`service-hostile: ${inputsTried} hostile inputs tried`);
});

afterEach(async () => {
  // Whatever the test sent, both processes are alive and answer an ordinary call.
  for (const svc of [meshtest, documents]) {
    expect(svc.exited(), svc.output()).toBeUndefined();
    expect(svc.stderr()).not.toMatch(/Unhandled|uncaught|TypeError|RangeError/i);
  }
  const echo = await grpc(addr(meshtest, "meshtest"), ECHO, frame(echoBytes("still here")));
  expect(echo.code).toBe(0);
  expect(fromBinary(EchoResponseSchema, echo.messages[0]!).text).toBe("still here");
  for (const target of [addr(meshtest, "meshtest"), addr(documents, "documents")]) {
    const health = await grpc(target, CHECK, frame(checkBytes("")));
    expect(health.code, target).toBe(0);
    expect(fromBinary(HealthCheckResponseSchema, health.messages[0]!).status).toBe(1);
  }
});

// ---- bytes ----

function frame(payload: Uint8Array, flags = 0): Buffer {
  const prefix = Buffer.alloc(5);
  prefix[0] = flags;
  prefix.writeUInt32BE(payload.length, 1);
  return Buffer.concat([prefix, payload]);
}

const echoBytes = (text: string) => toBinary(EchoRequestSchema, create(EchoRequestSchema, { text }));
const checkBytes = (service: string) =>
  toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, { service }));

/** The gRPC response frames of a body (whole frames only). */
function messagesOf(body: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at + 5 <= body.length; at += 5 + body.readUInt32BE(at + 1)) {
    out.push(body.subarray(at + 5, at + 5 + body.readUInt32BE(at + 1)));
  }
  return out;
}

const uploadHeader = (title: string) =>
  toBinary(
    UploadRequestSchema,
    create(UploadRequestSchema, {
      part: {
        case: "header",
        value: {
          document: { title, documentType: DocumentType.OTHER },
          filename: "notes.txt",
          declaredMimeType: "text/plain",
        },
      },
    }),
  );

// ---- node:http2 ----

interface Answer {
  /** HTTP status, 0 if none came. */
  status: number;
  /** grpc-status from the trailers or a trailers-only answer; NaN if none. */
  code: number;
  message: string;
  messages: Buffer[];
  /** RST_STREAM code the stream ended with (0: it ended normally). */
  rst: number;
  /** Set when the bound passed with the stream still open. */
  noAnswer?: true;
}

interface CallOptions {
  method?: string;
  /** Leave the request stream open after the body (a client that stalls). */
  keepOpen?: boolean;
  session?: http2.ClientHttp2Session;
  sessionSettings?: http2.Settings;
  boundMs?: number;
}

/** One request over h2c with headers and body exactly as given; settles when the stream closes. */
function grpc(
  target: string,
  path: string,
  body: Buffer | undefined,
  headers: http2.OutgoingHttpHeaders = {},
  opts: CallOptions = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    let session = opts.session;
    if (!session) {
      session = http2.connect(`http://${target}`, { settings: opts.sessionSettings });
      session.on("error", () => undefined);
    }
    let settled = false;
    const done = (a: Answer) => {
      if (settled) return;
      settled = true;
      clearTimeout(bound);
      if (!opts.session) session!.destroy();
      resolve(a);
    };
    const req = session.request({
      ":method": opts.method ?? "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
      ...headers,
    });
    const chunks: Buffer[] = [];
    const a: Answer = { status: 0, code: NaN, message: "", messages: [], rst: 0 };
    const finish = () => done({ ...a, messages: messagesOf(Buffer.concat(chunks)), rst: req.rstCode ?? 0 });
    // The status ends the call for the client even while its own request stream is still open
    // (grpc-js sends no RST_STREAM after it, so the stream would not close by itself).
    const status = (h: http2.IncomingHttpHeaders) => {
      if (h["grpc-status"] === undefined) return;
      a.code = Number(h["grpc-status"]);
      a.message = decodeURIComponent(String(h["grpc-message"] ?? ""));
      finish();
      req.close();
    };
    const bound = setTimeout(() => {
      req.close(http2.constants.NGHTTP2_CANCEL);
      done({ ...a, noAnswer: true });
    }, opts.boundMs ?? ANSWER_BOUND_MS);
    req.on("response", (h) => {
      a.status = Number(h[":status"]);
      status(h);
    });
    req.on("trailers", status);
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", () => undefined);
    req.on("close", finish);
    try {
      if (body) req.write(body);
      if (!opts.keepOpen) req.end();
    } catch (err) {
      reject(err);
    }
  });
}

// ---- HTTP/2 frames by hand, for what node:http2 will not send ----

/** An HPACK integer with an n-bit prefix (RFC 7541 5.1). */
function hpackInt(value: number, prefixBits: number, firstByte = 0): Buffer {
  const max = (1 << prefixBits) - 1;
  if (value < max) return Buffer.from([firstByte | value]);
  const out = [firstByte | max];
  for (value -= max; value >= 128; value >>= 7) out.push((value & 0x7f) | 0x80);
  out.push(value);
  return Buffer.from(out);
}

/** A header block of literals without indexing and without Huffman coding: the plainest HPACK. */
function headerBlock(headers: Array<[string, string]>): Buffer {
  const parts: Buffer[] = [];
  for (const [name, value] of headers) {
    parts.push(Buffer.from([0x00]), hpackInt(name.length, 7), Buffer.from(name, "latin1"));
    parts.push(hpackInt(Buffer.byteLength(value, "latin1"), 7), Buffer.from(value, "latin1"));
  }
  return Buffer.concat(parts);
}

function h2Frame(type: number, flags: number, streamId: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(streamId, 5);
  return Buffer.concat([head, payload]);
}

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const SETTINGS = (flags = 0) => h2Frame(0x4, flags, 0, Buffer.alloc(0));

/**
 * Sends one request as raw frames on stream 1 and reports how the server answered it: response
 * HEADERS, RST_STREAM with its code, GOAWAY with its code, or the socket closing.
 */
function rawRequest(target: string, extra: Array<[string, string]>, body: Buffer): Promise<string> {
  const [host, port] = target.split(":");
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), host!);
    let buf = Buffer.alloc(0);
    const done = (what: string) => {
      clearTimeout(bound);
      socket.destroy();
      resolve(what);
    };
    const bound = setTimeout(() => done("no answer"), ANSWER_BOUND_MS);
    socket.on("error", () => undefined);
    socket.on("close", () => done("connection closed"));
    socket.on("connect", () => {
      const block = headerBlock([
        [":method", "POST"],
        [":scheme", "http"],
        [":path", ECHO],
        [":authority", target],
        ["content-type", "application/grpc"],
        ["te", "trailers"],
        ...extra,
      ]);
      socket.write(
        Buffer.concat([PREFACE, SETTINGS(), h2Frame(0x1, 0x4, 1, block), h2Frame(0x0, 0x1, 1, body)]), // END_HEADERS; END_STREAM
      );
    });
    socket.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 9) {
        const len = buf.readUIntBE(0, 3);
        if (buf.length < 9 + len) return;
        const [type, flags, stream] = [buf[3]!, buf[4]!, buf.readUInt32BE(5) & 0x7fffffff];
        const payload = buf.subarray(9, 9 + len);
        buf = buf.subarray(9 + len);
        if (type === 0x4 && !(flags & 0x1)) socket.write(SETTINGS(0x1)); // acknowledge the server's SETTINGS
        if (type === 0x1 && stream === 1) return done("HEADERS");
        if (type === 0x3 && stream === 1) return done(`RST_STREAM ${payload.readUInt32BE(0)}`);
        if (type === 0x7) return done(`GOAWAY ${payload.readUInt32BE(4)}`);
      }
    });
  });
}

/** Writes bytes on a bare TCP connection and reports whether, and when, the server closes it. */
function rawSocket(
  target: string,
  bytes: Buffer | undefined,
  boundMs: number,
): Promise<{ closed: boolean; ms: number }> {
  const [host, port] = target.split(":");
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), host!);
    const start = Date.now();
    const bound = setTimeout(() => {
      socket.destroy();
      resolve({ closed: false, ms: Date.now() - start });
    }, boundMs);
    socket.on("error", () => undefined);
    socket.on("data", () => undefined);
    socket.on("close", () => {
      clearTimeout(bound);
      resolve({ closed: true, ms: Date.now() - start });
    });
    socket.on("connect", () => bytes && socket.write(bytes));
  });
}

// ---- the inputs ----

type Target = "meshtest Echo" | "documents Health/Check";
const targets: Array<[Target, () => string, string, Buffer]> = [
  ["meshtest Echo", () => addr(meshtest, "meshtest"), ECHO, Buffer.from(echoBytes("x"))],
  ["documents Health/Check", () => addr(documents, "documents"), CHECK, Buffer.from(checkBytes(""))],
];

describe.each(targets)("malformed gRPC frames at %s", (_name, target, path, valid) => {
  const max = path === ECHO ? MESHTEST_MAX_MESSAGE : DOCUMENTS_MAX_MESSAGE;
  // [input, body, extra headers, grpc-status]
  const inputs: Array<[string, Buffer | undefined, http2.OutgoingHttpHeaders, number]> = [
    // A request that ends partway through a frame is refused as such (invalid_argument), whether
    // the cut falls in the prefix or in the message.
    ["truncated 5-byte prefix", Buffer.from([0, 0, 0]), {}, 3],
    ["length prefix larger than the body", Buffer.concat([Buffer.from([0, 0, 0, 0, 64]), valid]), {}, 3],
    // The declared length is checked against the message limit before any of it is buffered.
    ["length prefix of 4 GiB - 1", Buffer.concat([Buffer.from([0, 0xff, 0xff, 0xff, 0xff]), valid]), {}, 8],
    [`a message of max + 1 bytes`, frame(Buffer.alloc(max + 1)), {}, 8],
    // A compressed flag with no grpc-encoding is a protocol error (the gRPC spec): internal, with
    // a sentence. (grpc-js, which served these calls before, read such bytes as uncompressed.)
    ["compressed flag with no grpc-encoding", frame(valid, 1), {}, 13],
    // The transport inflates gzip and deflate, as grpc-js did; anything else is unimplemented.
    ["grpc-encoding: br, compressed", frame(valid, 1), { "grpc-encoding": "br" }, 12],
    ["grpc-encoding: br, flag clear", frame(valid), { "grpc-encoding": "br" }, 0],
    ["grpc-encoding: gzip, a gzipped message", frame(zlib.gzipSync(valid), 1), { "grpc-encoding": "gzip" }, 0],
    [
      "grpc-encoding: deflate, a deflated message",
      frame(zlib.deflateSync(valid), 1),
      { "grpc-encoding": "deflate" },
      0,
    ],
    // The limit holds for what a message inflates to, not only for what it weighs on the wire.
    [
      "grpc-encoding: gzip, a small message inflating past the limit",
      frame(zlib.gzipSync(Buffer.alloc(max + 1)), 1),
      { "grpc-encoding": "gzip" },
      8,
    ],
    // A failed inflate is internal, as the gRPC spec and grpc-js have it.
    ["grpc-encoding: gzip, not gzip", frame(Buffer.from("not gzip at all"), 1), { "grpc-encoding": "gzip" }, 13],
    // Reaches our adapter, which decodes the bytes itself: invalid_argument with a sentence.
    ["garbage protobuf", frame(Buffer.from([0xff, 0xff, 0xff, 0xff])), {}, 3],
    ["a wire type that does not exist", frame(Buffer.from([0x0f, 0x01])), {}, 3],
    // A second message or none on a unary method is unimplemented, as grpc-js answered it.
    ["two messages on a unary method", Buffer.concat([frame(valid), frame(valid)]), {}, 12],
    ["zero messages on a unary method", undefined, {}, 12],
    ["an empty frame then another", Buffer.concat([frame(Buffer.alloc(0)), frame(valid)]), {}, 12],
  ];

  it.each(inputs)("%s", async (_input, body, headers, code) => {
    inputsTried++;
    const r = await grpc(target(), path, body, headers);
    expect(r.noAnswer).toBeUndefined();
    expect(r.status).toBe(200);
    expect(r.code).toBe(code);
    if (code !== 0) expect(r.message).not.toBe("");
  });

  it("a valid frame followed by a partial one is refused, not answered as if it were whole", async () => {
    inputsTried += 2;
    // The leftover bytes are noticed and the call refused (a cut-off upload must not count as done).
    for (const tail of [Buffer.from([0, 0]), Buffer.from([0, 0, 0, 0, 9, 1, 2])]) {
      const r = await grpc(target(), path, Buffer.concat([frame(valid), tail]));
      expect(r.noAnswer).toBeUndefined();
      expect([r.code, r.message]).toEqual([3, "the request ended in the middle of a message"]);
    }
  });
});

describe("malformed frames on streaming methods of the conformance service", () => {
  const sumBytes = (value: bigint) => Buffer.from(toBinary(SumRequestSchema, create(SumRequestSchema, { value })));

  it("a client stream whose last frame is cut short is refused, not summed without it", async () => {
    inputsTried++;
    const body = Buffer.concat([frame(sumBytes(1n)), frame(sumBytes(2n)).subarray(0, 4)]);
    const r = await grpc(addr(meshtest, "meshtest"), SUM, body);
    expect([r.code, r.message]).toEqual([3, "the request ended in the middle of a message"]);
  });

  it("garbage mid-stream is invalid_argument; a server stream with no request is unimplemented", async () => {
    inputsTried += 2;
    const sum = await grpc(
      addr(meshtest, "meshtest"),
      SUM,
      Buffer.concat([frame(sumBytes(1n)), frame(Buffer.from([0xff]))]),
    );
    expect(sum.code).toBe(3);
    const count = await grpc(addr(meshtest, "meshtest"), COUNT, undefined);
    expect(count.code).toBe(12);
  });
});

describe("bad headers", () => {
  const meshtestTarget = () => addr(meshtest, "meshtest");
  const echo = () => frame(echoBytes("x"));

  it.each([
    ["text/plain", 415],
    ["application/json", 415],
    // gRPC-web is the gateway's; a gRPC answer would be one its client cannot parse.
    ["application/grpc-web+proto", 415],
    ["applicationgrpc", 415],
    ["application/grpc", 200],
    ["application/grpc+proto", 200],
    ["application/grpc;charset=utf-8", 200],
  ])("content-type %s: HTTP %i (gRPC is application/grpc or application/grpc+codec)", async (ct, status) => {
    inputsTried++;
    const r = await grpc(meshtestTarget(), ECHO, echo(), { "content-type": ct });
    expect(r.noAnswer).toBeUndefined();
    expect([r.status, r.code]).toEqual(status === 200 ? [200, 0] : [415, NaN]);
  });

  it("no te: trailers is served: the transport does not require it", async () => {
    inputsTried++;
    const r = await grpc(meshtestTarget(), ECHO, echo(), { te: undefined });
    expect(r.code).toBe(0);
  });

  // HTTP/2 forbids connection-specific headers in a request (RFC 9113 8.2.2); node's HTTP/2 layer
  // (nghttp2) resets the stream with PROTOCOL_ERROR before grpc-js sees it. node:http2 refuses to
  // send these at all, so the frames are written by hand.
  it.each([
    ["connection", "keep-alive"],
    ["upgrade", "h2c"],
    ["keep-alive", "timeout=5"],
    ["proxy-connection", "keep-alive"],
    ["transfer-encoding", "chunked"],
    ["te", "gzip"],
  ])("%s: %s -> RST_STREAM PROTOCOL_ERROR, connection kept", async (name, value) => {
    inputsTried++;
    expect(await rawRequest(meshtestTarget(), [[name, value]], echo())).toBe("RST_STREAM 1");
  });

  it("the same request by hand without those headers is answered (the frames are right)", async () => {
    expect(await rawRequest(meshtestTarget(), [["x-fine", "1"]], echo())).toBe("HEADERS");
  });

  it("a 16 KB header value is served; a 100 KB one is refused by node (REFUSED_STREAM)", async () => {
    inputsTried += 2;
    expect((await grpc(meshtestTarget(), ECHO, echo(), { "x-big": "a".repeat(16_000) })).code).toBe(0);
    // Past node's maximum header list size the stream is refused before the transport sees it.
    const big = await grpc(meshtestTarget(), ECHO, echo(), { "x-big": "a".repeat(100_000) });
    expect([big.status, big.rst]).toEqual([0, http2.constants.NGHTTP2_REFUSED_STREAM]);
  });

  it("200 headers are refused by node (ENHANCE_YOUR_CALM: more than 128 header pairs)", async () => {
    inputsTried++;
    const many = Object.fromEntries(Array.from({ length: 200 }, (_, i) => [`x-h${i}`, "v"]));
    const r = await grpc(meshtestTarget(), ECHO, echo(), many);
    expect([r.status, r.rst]).toEqual([0, http2.constants.NGHTTP2_ENHANCE_YOUR_CALM]);
  });

  // grpc-timeout is read by the gRPC spec's grammar (1-8 digits and a unit); anything else is
  // invalid_argument with a sentence naming the rule.
  it.each([
    ["abc", 3],
    ["-1S", 3],
    ["1.5S", 3],
    ["99999999999H", 3],
    ["", 3],
    ["1H", 0],
  ])("grpc-timeout %s -> %i", async (timeout, code) => {
    inputsTried++;
    const r = await grpc(meshtestTarget(), ECHO, echo(), { "grpc-timeout": timeout });
    expect(r.code).toBe(code);
    if (code === 3) expect(r.message).toMatch(/grpc-timeout .* is not a timeout/);
  });

  it.each(["99999999M", "2592000S"])(
    "grpc-timeout %s (190 years; 30 days) is a long deadline, not one that wrapped around",
    async (timeout) => {
      inputsTried++;
      // Past what a Node timer holds (2^31 ms, 24.8 days) the deadline is held as that; grpc-js,
      // which served these calls before, wrapped it to a negative delay and answered at once.
      const wait = frame(toBinary(WaitRequestSchema, create(WaitRequestSchema, { ms: 100 })));
      expect((await grpc(meshtestTarget(), WAIT, wait, { "grpc-timeout": timeout })).code).toBe(0);
    },
  );

  it.each([
    [`/${MESHTEST}/Nope`],
    ["/nope.v1.Nothing/Check"],
    ["/../../etc/passwd"],
    ["/"],
    [`/${MESHTEST}/Echo/extra`],
  ])("path %s -> unimplemented", async (path) => {
    inputsTried++;
    const r = await grpc(meshtestTarget(), path, echo());
    expect([r.status, r.code]).toEqual([200, 12]);
  });

  it("a GET is unimplemented (gRPC calls are POSTs); one without content-type is HTTP 415", async () => {
    inputsTried += 2;
    const r = await grpc(meshtestTarget(), ECHO, undefined, {}, { method: "GET" });
    expect([r.status, r.code]).toEqual([200, 12]);
    const plain = await grpc(meshtestTarget(), ECHO, undefined, { "content-type": undefined }, { method: "GET" });
    expect([plain.status, plain.code]).toEqual([415, NaN]);
  });

  it("documents: a bad message with no token is invalid_argument (decoding comes first), a good one unauthenticated", async () => {
    inputsTried += 2;
    const target = addr(documents, "documents");
    expect((await grpc(target, GET_DOCUMENT, frame(Buffer.from([0xff, 0xff])))).code).toBe(3);
    expect((await grpc(target, GET_DOCUMENT, frame(Buffer.alloc(0)))).code).toBe(16);
  });
});

describe("connection-level abuse", () => {
  it.each([
    ["an HTTP/1.1 request", Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n")],
    ["binary junk", Buffer.from([0x00, 0x01, 0x02, 0xff, 0xfe, ...Buffer.from("not a preface at all, 1234")])],
    ["half a preface, then junk", Buffer.concat([PREFACE.subarray(0, 10), Buffer.from("xxxxxxxxxxxxxxxxxxxxxxxx")])],
  ])("%s instead of the HTTP/2 preface: the connection is closed at once", async (_name, bytes) => {
    inputsTried++;
    for (const svc of [addr(meshtest, "meshtest"), addr(documents, "documents")]) {
      expect((await rawSocket(svc, bytes, ANSWER_BOUND_MS)).closed).toBe(true);
    }
  });

  it("slowloris: a preface then silence, or a live peer that never opens a stream, is closed when idle", async () => {
    inputsTried += 2;
    // There is no handshake or header timeout; the connection idle bound (maxConnectionIdleMs,
    // platform/grpc/server.ts) ends both.
    const target = addr(meshtest, "meshtest");
    const raw = await rawSocket(target, Buffer.concat([PREFACE, SETTINGS()]), ANSWER_BOUND_MS);
    expect(raw.closed).toBe(true);
    expect(raw.ms).toBeGreaterThanOrEqual(MESHTEST_IDLE_MS - 100);

    // node:http2 answers the server's keepalive pings, so keepalive alone would never end this.
    const session = http2.connect(`http://${target}`);
    session.on("error", () => undefined);
    const start = Date.now();
    const ended = await new Promise<string>((resolve) => {
      const bound = setTimeout(() => resolve("still open"), ANSWER_BOUND_MS);
      session.on("goaway", (code) => {
        clearTimeout(bound);
        resolve(`GOAWAY ${code}`);
      });
    });
    session.destroy();
    expect(ended).toBe("GOAWAY 0");
    expect(Date.now() - start).toBeGreaterThanOrEqual(MESHTEST_IDLE_MS - 100);
  });

  it("a socket that sends nothing is closed by keepalive (ping after 30 s, 10 s to answer) before the idle bound", async () => {
    inputsTried++;
    // documents keeps the 5 minute idle bound; a peer that never answers a ping goes first.
    const r = await rawSocket(addr(documents, "documents"), undefined, 60_000);
    expect(r.closed).toBe(true);
    expect(r.ms).toBeGreaterThanOrEqual(39_000);
  }, 90_000);

  it("500 concurrent calls on one connection are all answered", async () => {
    inputsTried++;
    const session = http2.connect(`http://${addr(meshtest, "meshtest")}`);
    session.on("error", () => undefined);
    try {
      const wait = frame(toBinary(WaitRequestSchema, create(WaitRequestSchema, { ms: 500 })));
      const codes = await Promise.all(
        Array.from({ length: 500 }, () => grpc("", WAIT, wait, { "grpc-timeout": "20S" }, { session })),
      );
      expect(codes.filter((r) => r.code !== 0)).toEqual([]);
    } finally {
      session.destroy();
    }
  });

  it("a flood of streams opened and reset at once ends that connection (GOAWAY), not the process", async () => {
    inputsTried++;
    const session = http2.connect(`http://${addr(meshtest, "meshtest")}`);
    let goaway: number | undefined;
    session.on("goaway", (code) => (goaway = code));
    session.on("error", () => undefined);
    let opened = 0;
    try {
      for (; opened < 20_000 && !session.closed && !session.destroyed; opened++) {
        const req = session.request({ ":method": "POST", ":path": WAIT, "content-type": "application/grpc" });
        req.on("error", () => undefined);
        req.close(http2.constants.NGHTTP2_CANCEL);
        if (opened % 100 === 0) await new Promise((r) => setImmediate(r));
      }
    } catch {
      // node refuses new streams on a session the server is closing
    }
    await expect.poll(() => goaway, { timeout: ANSWER_BOUND_MS }).toBeDefined();
    expect(opened).toBeLessThan(20_000);
    session.destroy();
  });

  it("a client stream that stalls ends at its deadline, not never", async () => {
    inputsTried++;
    const one = frame(toBinary(SumRequestSchema, create(SumRequestSchema, { value: 1n })));
    const r = await grpc(addr(meshtest, "meshtest"), SUM, one, { "grpc-timeout": "500m" }, { keepOpen: true });
    expect(r.noAnswer).toBeUndefined();
    expect(r.code).toBe(4);
  });

  it.each([
    ["Echo (unary), headers and nothing more", ECHO, undefined],
    ["Echo (unary), half a frame", ECHO, Buffer.from([0, 0, 0, 0, 4, 0x0a])],
    ["Count (server streaming), headers and nothing more", COUNT, undefined],
  ])("%s with no grpc-timeout ends at the default deadline", async (_name, path, body) => {
    inputsTried++;
    // These handlers start only once the request has ended; the default deadline of 5 s
    // (meshtest-main.ts) runs from the call's headers (platform/grpc/adapter.ts whenRequestArrives).
    const r = await grpc(addr(meshtest, "meshtest"), path, body, {}, { keepOpen: true });
    expect(r.noAnswer).toBeUndefined();
    expect([r.code, r.message]).toEqual([4, "the request did not arrive within the default deadline of 5000 ms"]);
  });

  it("documents: a GetDocument whose request never arrives ends at DEFAULT_DEADLINE_MS (10 s)", async () => {
    inputsTried++;
    const r = await grpc(
      addr(documents, "documents"),
      GET_DOCUMENT,
      undefined,
      { authorization: bearer },
      {
        keepOpen: true,
        boundMs: 20_000,
      },
    );
    expect(r.noAnswer).toBeUndefined();
    expect([r.code, r.message]).toEqual([4, "the request did not arrive within the default deadline of 10000 ms"]);
  });

  it("documents: an Upload that sends its header then stalls ends at its deadline", async () => {
    inputsTried++;
    const r = await grpc(
      addr(documents, "documents"),
      UPLOAD,
      frame(uploadHeader("stalled upload")),
      { "grpc-timeout": "1S", authorization: bearer },
      { keepOpen: true },
    );
    expect(r.noAnswer).toBeUndefined();
    expect(r.code).toBe(4);
  });

  it("documents: an Upload whose last chunk frame is cut short is refused, not stored short", async () => {
    inputsTried++;
    const chunk = (text: string) =>
      frame(
        toBinary(
          UploadRequestSchema,
          create(UploadRequestSchema, { part: { case: "chunk", value: Buffer.from(text) } }),
        ),
      );
    const body = Buffer.concat([
      frame(uploadHeader("cut-off upload")),
      chunk("Aspirin reduced the risk of ischaemic stroke"),
      chunk(" in the trial.\n").subarray(0, 12),
    ]);
    const r = await grpc(addr(documents, "documents"), UPLOAD, body, { "grpc-timeout": "10S", authorization: bearer });
    expect([r.code, r.message]).toEqual([3, "the request ended in the middle of a message"]);
  });

  it("a reader that never reads (zero window) is cut off after its deadline, not held", async () => {
    inputsTried++;
    // The server stream's status cannot get past bytes the client will not take; the adapter resets
    // the stream a second after the deadline (platform/grpc/adapter.ts, resetIfStuck).
    const count = frame(toBinary(CountRequestSchema, create(CountRequestSchema, { count: 1000 })));
    const r = await grpc(
      addr(meshtest, "meshtest"),
      COUNT,
      count,
      { "grpc-timeout": "1S" },
      { sessionSettings: { initialWindowSize: 0 } },
    );
    expect(r.noAnswer).toBeUndefined();
    expect(r.rst).toBe(http2.constants.NGHTTP2_CANCEL);
  });
});
