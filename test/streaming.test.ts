import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { MeshTestService } from "../gen/medmesh/meshtest/v1/meshtest_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { meshInterceptors } from "../platform/grpc/interceptors/index.js";
import { register, startGrpcServer, type RunningGrpcServer } from "../platform/grpc/server.js";
import { startGateway } from "../gateway/main.js";
import { testEnv } from "./support/backends.js";
import { rejection } from "./support/rejection.js";
import { meshTestService, type Observed } from "./support/meshtest-service.js";

type MeshTest = Client<typeof MeshTestService>;

const observed: Observed = { cancelledStreams: 0, waitsCancelled: 0 };
let server: RunningGrpcServer;
let stopGateway: () => Promise<void>;
let gatewayUrl: string;
const clients: Record<string, () => MeshTest> = {};

async function* from<T>(items: T[]): AsyncIterable<T> {
  for (const i of items) yield i;
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

beforeAll(async () => {
  server = await startGrpcServer({
    name: "meshtest",
    host: "127.0.0.1",
    port: 0,
    services: [register(MeshTestService, meshTestService(observed))],
    interceptors: meshInterceptors({ component: "meshtest" }),
    deadlines: { defaultUnaryMs: 5_000, maxUnaryMs: 10_000 },
    maxMessageBytes: 1024 * 1024,
  });
  const gw = await startGateway(
    { ...testEnv, MESHTEST_TARGET: `127.0.0.1:${server.port}` },
    { services: [MeshTestService] },
  );
  stopGateway = gw.stop;
  gatewayUrl = `http://127.0.0.1:${gw.port}`;
  const direct = createMeshClient(MeshTestService, `127.0.0.1:${server.port}`);
  clients["grpc-js straight to the server"] = () => direct as unknown as MeshTest;
  clients["gRPC over h2c through the gateway"] = () =>
    createClient(MeshTestService, createGrpcTransport({ baseUrl: gatewayUrl }));
});

afterAll(async () => {
  await stopGateway?.();
  await server?.shutdown(1_000);
});

describe.each(["grpc-js straight to the server", "gRPC over h2c through the gateway"])(
  "every call kind, %s",
  (name) => {
    const client = () => clients[name]!();

    it("unary", async () => {
      expect((await client().echo({ text: "hi" })).text).toBe("hi");
    });

    it("server streaming", async () => {
      expect((await collect(client().count({ count: 5 }))).map((r) => r.n)).toEqual([1, 2, 3, 4, 5]);
    });

    it("client streaming", async () => {
      const res = await client().sum(from([1n, 2n, 3n, 4n].map((value) => ({ value }))));
      expect(res.total).toBe(10n);
      expect(res.messages).toBe(4);
    });

    it("bidi streaming", async () => {
      expect((await collect(client().chat(from([{ text: "a" }, { text: "b" }])))).map((r) => r.text)).toEqual([
        "A",
        "B",
      ]);
    });

    it("a streamed message that breaks the contract ends the call with invalid_argument", async () => {
      const err = await rejection(client().sum(from([{ value: 1n }, { value: 5000n }])));
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.rawMessage).toMatch(/value/);
    });

    it("a bug in a handler is internal with a fixed sentence, never the stack", async () => {
      const err = await rejection(client().echo({ text: "boom" }));
      expect(err.code).toBe(Code.Internal);
      expect(err.rawMessage).toBe("internal error; it has been logged");
    });

    it("a handler's own status comes through unchanged", async () => {
      const err = await rejection(client().echo({ text: "refuse" }));
      expect(err.code).toBe(Code.FailedPrecondition);
      expect(err.rawMessage).toBe("refused on purpose");
    });

    it("the caller's deadline reaches the handler and expires as deadline_exceeded", async () => {
      const res = await client().wait({ ms: 0 }, { timeoutMs: 3_000 });
      expect(Number(res.remainingMs)).toBeGreaterThan(0);
      expect(Number(res.remainingMs)).toBeLessThanOrEqual(3_000);
      const err = await rejection(client().wait({ ms: 5_000 }, { timeoutMs: 200 }));
      expect(err.code).toBe(Code.DeadlineExceeded);
    });

    it("a unary call with no deadline gets the server's default", async () => {
      const res = await client().wait({ ms: 0 });
      expect(Number(res.remainingMs)).toBeGreaterThan(0);
      expect(Number(res.remainingMs)).toBeLessThanOrEqual(10_000);
    });

    it("cancelling a stream cancels the handler", async () => {
      const before = observed.cancelledStreams;
      const controller = new AbortController();
      const seen: number[] = [];
      await expect(
        (async () => {
          for await (const r of client().count({ count: 1000, intervalMs: 20 }, { signal: controller.signal })) {
            seen.push(r.n);
            if (r.n === 3) controller.abort();
          }
        })(),
      ).rejects.toBeDefined();
      expect(seen).toEqual([1, 2, 3]);
      await expect.poll(() => observed.cancelledStreams, { timeout: 5_000 }).toBeGreaterThan(before);
    });
  },
);

describe("server streaming to browsers", () => {
  it("works over gRPC-web on HTTP/1.1", async () => {
    const client = createClient(MeshTestService, createGrpcWebTransport({ baseUrl: gatewayUrl, httpVersion: "1.1" }));
    expect((await collect(client.count({ count: 3 }))).map((r) => r.n)).toEqual([1, 2, 3]);
  });

  it("works over Connect JSON streaming with fetch", async () => {
    const body = JSON.stringify({ count: 2 });
    const frame = Buffer.alloc(5 + body.length);
    frame.writeUInt32BE(body.length, 1);
    frame.write(body, 5);
    const res = await fetch(`${gatewayUrl}/medmesh.meshtest.v1.MeshTestService/Count`, {
      method: "POST",
      headers: { "content-type": "application/connect+json" },
      body: frame,
    });
    expect(res.status).toBe(200);
    const bytes = Buffer.from(await res.arrayBuffer());
    const messages: string[] = [];
    for (let at = 0; at < bytes.length;) {
      const flags = bytes[at]!;
      const len = bytes.readUInt32BE(at + 1);
      messages.push(`${flags}:${bytes.subarray(at + 5, at + 5 + len).toString()}`);
      at += 5 + len;
    }
    expect(messages).toEqual(['0:{"n":1}', '0:{"n":2}', "2:{}"]);
  });
});

describe("health", () => {
  it("flips to NOT_SERVING and back", async () => {
    const { Health, HealthCheckResponse_ServingStatus: S } = await import("../gen/grpc/health/v1/health_pb.js");
    const { ServingStatus } = await import("../platform/grpc/health.js");
    const health = createMeshClient(Health, `127.0.0.1:${server.port}`);
    const watch = health.watch({ service: "" });
    const it = watch[Symbol.asyncIterator]();
    expect((await it.next()).value.status).toBe(S.SERVING);
    server.health.setAll(ServingStatus.NOT_SERVING);
    expect((await it.next()).value.status).toBe(S.NOT_SERVING);
    expect((await health.check({ service: "medmesh.meshtest.v1.MeshTestService" })).status).toBe(S.NOT_SERVING);
    server.health.setAll(ServingStatus.SERVING);
    expect((await it.next()).value.status).toBe(S.SERVING);
    await it.return?.();
    const err = await rejection(health.check({ service: "no.such.Service" }));
    expect(err.code).toBe(Code.NotFound);
    health.close();
  });
});
