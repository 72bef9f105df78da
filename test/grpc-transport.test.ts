import http2 from "node:http2";
import { afterEach, describe, expect, it } from "vitest";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as S,
} from "../gen/grpc/health/v1/health_pb.js";
import {
  CountRequestSchema,
  EchoRequestSchema,
  EchoResponseSchema,
  MeshTestService,
  WaitRequestSchema,
} from "../gen/medmesh/meshtest/v1/meshtest_pb.js";
import { meshInterceptors } from "../platform/grpc/interceptors/index.js";
import { register, startGrpcServer, type RunningGrpcServer } from "../platform/grpc/server.js";
import { meshTestService, type Observed } from "./support/meshtest-service.js";

// The mesh's own gRPC server transport (platform/grpc/h2-transport.ts) at the edges no other test
// reaches: a client resetting its stream mid-call, a response over the message limit, and
// shutdown with calls in flight. Raw node:http2 clients, so every frame is the test's choice.

const MESHTEST = "/medmesh.meshtest.v1.MeshTestService";
let server: RunningGrpcServer | undefined;
let observed: Observed;

async function start(impl: Partial<ServiceImpl<typeof MeshTestService>> = {}, maxMessageBytes = 1024 * 1024) {
  observed = { cancelledStreams: 0, waitsCancelled: 0 };
  server = await startGrpcServer({
    name: "transport-test",
    host: "127.0.0.1",
    port: 0,
    services: [register(MeshTestService, { ...meshTestService(observed), ...impl })],
    interceptors: meshInterceptors({ component: "transport-test" }),
    deadlines: { defaultUnaryMs: 5_000, maxUnaryMs: 10_000 },
    maxMessageBytes,
  });
  return server;
}

afterEach(async () => {
  await server?.shutdown(500);
  server = undefined;
});

function frame(payload: Uint8Array): Buffer {
  const out = Buffer.alloc(5 + payload.length);
  out.writeUInt32BE(payload.length, 1);
  out.set(payload, 5);
  return out;
}

interface Outcome {
  code?: number;
  message?: string;
  messages: Buffer[];
  rst?: number;
}

function call(
  session: http2.ClientHttp2Session,
  path: string,
  body: Buffer,
  onMessage?: (m: Buffer, req: http2.ClientHttp2Stream) => void,
): Promise<Outcome> {
  return new Promise((resolve) => {
    const req = session.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
    });
    const out: Outcome = { messages: [] };
    let pending = Buffer.alloc(0);
    const status = (h: http2.IncomingHttpHeaders) => {
      if (h["grpc-status"] === undefined) return;
      out.code = Number(h["grpc-status"]);
      out.message = decodeURIComponent(String(h["grpc-message"] ?? ""));
    };
    req.on("response", status);
    req.on("trailers", status);
    req.on("data", (c: Buffer) => {
      pending = Buffer.concat([pending, c]);
      while (pending.length >= 5 && pending.length >= 5 + pending.readUInt32BE(1)) {
        const m = pending.subarray(5, 5 + pending.readUInt32BE(1));
        pending = pending.subarray(5 + m.length);
        out.messages.push(m);
        onMessage?.(m, req);
      }
    });
    req.on("error", () => undefined);
    req.on("close", () => resolve({ ...out, rst: req.rstCode }));
    req.end(body);
  });
}

const connect = (s: RunningGrpcServer) => {
  const session = http2.connect(`http://${s.address}`);
  session.on("error", () => undefined);
  return session;
};

describe("the gRPC server transport", () => {
  it("a client's RST_STREAM mid-stream aborts the handler's signal", async () => {
    const s = await start();
    const session = connect(s);
    const count = frame(toBinary(CountRequestSchema, create(CountRequestSchema, { count: 1000, intervalMs: 10 })));
    const r = await call(session, `${MESHTEST}/Count`, count, (_m, req) => {
      if (!req.closed) req.close(http2.constants.NGHTTP2_CANCEL);
    });
    expect(r.rst).toBe(http2.constants.NGHTTP2_CANCEL);
    await expect.poll(() => observed.cancelledStreams).toBe(1);
    // A unary call reset before its answer: its handler's signal too.
    const wait = frame(toBinary(WaitRequestSchema, create(WaitRequestSchema, { ms: 5_000 })));
    const req = session.request({ ":method": "POST", ":path": `${MESHTEST}/Wait`, "content-type": "application/grpc" });
    req.on("error", () => undefined);
    req.end(wait);
    await new Promise((r) => setTimeout(r, 100));
    req.close(http2.constants.NGHTTP2_CANCEL);
    await expect.poll(() => observed.waitsCancelled).toBe(1);
    session.destroy();
  });

  it("a response over the message limit is resource_exhausted with a sentence, not a broken stream", async () => {
    const s = await start({ echo: (req) => ({ text: req.text.repeat(200) }) }, 1_000);
    const session = connect(s);
    const ok = await call(
      session,
      `${MESHTEST}/Echo`,
      frame(toBinary(EchoRequestSchema, create(EchoRequestSchema, { text: "a" }))),
    );
    expect([ok.code, fromBinary(EchoResponseSchema, ok.messages[0]!).text]).toEqual([0, "a".repeat(200)]);
    const big = await call(
      session,
      `${MESHTEST}/Echo`,
      frame(toBinary(EchoRequestSchema, create(EchoRequestSchema, { text: "abcdefgh" }))),
    );
    expect([big.code, big.message]).toEqual([
      8,
      "the response message is 1603 bytes, more than the limit of 1000 bytes",
    ]);
    session.destroy();
  });

  it("shutdown: GOAWAY to connected clients, a unary call in flight finishes, streams end unavailable, watchers see NOT_SERVING", async () => {
    const s = await start();
    const session = connect(s);
    const goaway = new Promise<number>((r) => session.once("goaway", (code) => r(code)));
    const watched: number[] = [];
    const watch = call(
      session,
      "/grpc.health.v1.Health/Watch",
      frame(toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, { service: "" }))),
      (m) => watched.push(fromBinary(HealthCheckResponseSchema, m).status),
    );
    const stream = call(
      session,
      `${MESHTEST}/Count`,
      frame(toBinary(CountRequestSchema, create(CountRequestSchema, { count: 1000, intervalMs: 50 }))),
    );
    const wait = call(
      session,
      `${MESHTEST}/Wait`,
      frame(toBinary(WaitRequestSchema, create(WaitRequestSchema, { ms: 300 }))),
    );
    await expect.poll(() => watched.length).toBe(1);
    const stopped = s.shutdown(5_000);
    expect(await goaway).toBe(http2.constants.NGHTTP2_NO_ERROR);
    expect((await wait).code).toBe(0);
    expect([(await stream).code, (await stream).message]).toEqual([14, "the server is shutting down; call again"]);
    await watch;
    expect(watched).toEqual([S.SERVING, S.NOT_SERVING]);
    await stopped;
    server = undefined;
    session.destroy();
  });
});
