/**
 * The servers bench/mesh-paths.ts compares, each forked as a process of its own so that the
 * server under load has its own core and its own /proc CPU figures:
 *
 * - `bare`: node:http2 answering every stream with one fixed gRPC frame (what Node itself costs);
 * - `raw`: a plain grpc-js server with a protobuf-es codec serving MeshTestService.Echo;
 * - `platform`: startGrpcServer + meshInterceptors serving the conformance service, as
 *   test/support/meshtest-main.ts builds it; BENCH_TELEMETRY says off, on (no exporter) or
 *   export (OTLP/HTTP to BENCH_OTLP_ENDPOINT);
 * - `gateway`: startGateway with MESHTEST_TARGET pointing at a platform process;
 * - `forwarder`: node:http2 relaying each stream to BENCH_UPSTREAM over one HTTP/2 connection and
 *   doing nothing else (no policy, limits, deadline, span, log or metric): the least a gateway
 *   written on node:http2 can cost per forwarded call;
 * - `otlp-sink`: answers OTLP/HTTP trace exports with 200 and drops them.
 *
 * BENCH_CODE_ROOT picks the checkout whose platform and gateway code is loaded (default: this
 * one), so an older tree can be measured side by side with this one in the same run.
 * Tells its parent `{ port }` over IPC once it listens.
 */
import { monitorEventLoopDelay, PerformanceObserver } from "node:perf_hooks";
import http from "node:http";
import http2 from "node:http2";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";

const here = path.dirname(fileURLToPath(import.meta.url));
const codeRoot = process.env.BENCH_CODE_ROOT || path.resolve(here, "../..");
const load = <T>(rel: string): Promise<T> => import(pathToFileURL(path.join(codeRoot, rel)).href) as Promise<T>;

/** The gRPC frame of EchoResponse{text:"hello"}: what every server here answers. */
const HELLO_FRAME = Buffer.from("00000000070a0568656c6c6f", "hex");

type Role = "bare" | "raw" | "platform" | "gateway" | "forwarder" | "otlp-sink";

async function bare(): Promise<number> {
  const server = http2.createServer();
  server.on("stream", (stream) => {
    stream.on("error", () => undefined);
    stream.resume();
    stream.on("end", () => {
      if (stream.destroyed) return;
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.once("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(HELLO_FRAME);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return (server.address() as { port: number }).port;
}

async function raw(): Promise<number> {
  // Code that does not depend on the checkout being measured: the reference is the same in every run.
  const pb = await import("../../gen/medmesh/meshtest/v1/meshtest_pb.js");
  const server = new grpc.Server();
  server.addService(
    {
      Echo: {
        path: `/${pb.MeshTestService.typeName}/Echo`,
        requestStream: false,
        responseStream: false,
        requestDeserialize: (b: Buffer) => fromBinary(pb.EchoRequestSchema, b),
        requestSerialize: (m: unknown) => Buffer.from(toBinary(pb.EchoRequestSchema, m as never)),
        responseSerialize: (m: unknown) => Buffer.from(toBinary(pb.EchoResponseSchema, m as never)),
        responseDeserialize: (b: Buffer) => fromBinary(pb.EchoResponseSchema, b),
      },
    },
    {
      Echo: (call: { request: { text: string } }, cb: (e: null, r: unknown) => void) =>
        cb(null, create(pb.EchoResponseSchema, { text: call.request.text })),
    },
  );
  return new Promise((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) =>
      err ? reject(err) : resolve(port),
    ),
  );
}

async function platform(): Promise<number> {
  const mode = process.env.BENCH_TELEMETRY ?? "off";
  if (mode !== "off") {
    const sdk = await load<typeof import("../../platform/telemetry/sdk.js")>("platform/telemetry/sdk.ts");
    sdk.startTelemetry({
      serviceName: "meshtest",
      logLevel: "info",
      otlpEndpoint: mode === "export" ? process.env.BENCH_OTLP_ENDPOINT : undefined,
    });
  }
  const { MeshTestService } = await load<typeof import("../../gen/medmesh/meshtest/v1/meshtest_pb.js")>(
    "gen/medmesh/meshtest/v1/meshtest_pb.ts",
  );
  const { meshInterceptors } = await load<typeof import("../../platform/grpc/interceptors/index.js")>(
    "platform/grpc/interceptors/index.ts",
  );
  const { register, startGrpcServer } =
    await load<typeof import("../../platform/grpc/server.js")>("platform/grpc/server.ts");
  const { meshTestService } = await load<typeof import("../../test/support/meshtest-service.js")>(
    "test/support/meshtest-service.ts",
  );
  // The same server test/support/meshtest-main.ts starts.
  const server = await startGrpcServer({
    name: "meshtest",
    host: "127.0.0.1",
    port: 0,
    services: [register(MeshTestService, meshTestService({ cancelledStreams: 0, waitsCancelled: 0 }))],
    interceptors: meshInterceptors({ component: "meshtest" }),
    deadlines: { defaultUnaryMs: 5_000, maxUnaryMs: 10_000 },
    maxMessageBytes: 1024 * 1024,
  });
  return server.port;
}

async function gateway(): Promise<number> {
  const { MeshTestService } = await load<typeof import("../../gen/medmesh/meshtest/v1/meshtest_pb.js")>(
    "gen/medmesh/meshtest/v1/meshtest_pb.ts",
  );
  const { startGateway } = await load<typeof import("../../gateway/main.js")>("gateway/main.ts");
  const g = await startGateway(
    {
      GATEWAY_HOST: "127.0.0.1",
      GATEWAY_PORT: "0",
      LOG_LEVEL: "info",
      SHUTDOWN_GRACE_MS: "2000",
      MESHTEST_TARGET: process.env.BENCH_UPSTREAM!,
      // One anonymous address sends every request; the limiter still runs on every call.
      RATE_LIMITS: "read=100000000:100000000,write=100000000:100000000,auth=1000:1000,upload=1000:1000",
    },
    { services: [MeshTestService] },
  );
  return g.port;
}

async function forwarder(): Promise<number> {
  const upstream = http2.connect(`http://${process.env.BENCH_UPSTREAM!}`);
  upstream.on("error", () => undefined);
  const server = http2.createServer();
  server.on("stream", (stream, headers) => {
    const up = upstream.request({
      ":method": "POST",
      ":path": headers[":path"],
      "content-type": headers["content-type"],
      te: "trailers",
    });
    // A client that goes away (h2load stops mid-call at the end of each row) takes the relayed
    // stream with it, and the other way round; neither may bring the process down.
    const cancel = () => {
      if (!up.destroyed) up.close(http2.constants.NGHTTP2_CANCEL);
      if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_CANCEL);
    };
    stream.on("error", cancel);
    up.on("error", cancel);
    stream.on("close", cancel);
    stream.on("data", (chunk: Buffer) => up.destroyed || up.write(chunk));
    stream.on("end", () => up.destroyed || up.end());
    let trailers: http2.IncomingHttpHeaders = {};
    up.on("response", (h) => {
      if (h["grpc-status"] !== undefined) trailers = h;
      if (stream.destroyed || stream.headersSent) return;
      stream.respond(
        { ":status": 200, "content-type": h["content-type"] ?? "application/grpc" },
        { waitForTrailers: true },
      );
    });
    up.on("data", (chunk: Buffer) => stream.destroyed || stream.write(chunk));
    up.on("trailers", (t) => (trailers = t));
    up.on("end", () => stream.destroyed || stream.end());
    stream.once("wantTrailers", () => {
      const status = String(trailers["grpc-status"] ?? "0");
      const message = trailers["grpc-message"];
      if (!stream.destroyed)
        stream.sendTrailers({ "grpc-status": status, ...(message ? { "grpc-message": message } : {}) });
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return (server.address() as { port: number }).port;
}

async function otlpSink(): Promise<number> {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/x-protobuf", "content-length": "0" });
      res.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return (server.address() as { port: number }).port;
}

const roles: Record<Role, () => Promise<number>> = { bare, raw, platform, gateway, forwarder, "otlp-sink": otlpSink };

/**
 * What holds this process's event loop up, for latency rows: how late a 10 ms timer fires
 * (the loop's delay: a GC pause, a long task, or the process waiting for a core) and how long
 * the collector paused it. The bench resets both before a row and reads them after it, over IPC.
 */
function watchStalls(): void {
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  let gcMaxMs = 0;
  let gcTotalMs = 0;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gcMaxMs = Math.max(gcMaxMs, e.duration);
      gcTotalMs += e.duration;
    }
  }).observe({ entryTypes: ["gc"] });
  process.on("message", (m: { stalls?: "reset" | "read" }) => {
    if (m.stalls === "reset") {
      delay.reset();
      gcMaxMs = 0;
      gcTotalMs = 0;
    } else if (m.stalls === "read") {
      // The timer's own 10 ms period is part of every sample; what is beyond it is the delay.
      const late = (ns: number) => Math.max(0, ns / 1e6 - 10);
      process.send!({
        stalls: { p99Ms: late(delay.percentile(99)), maxMs: late(delay.max), gcMaxMs, gcTotalMs },
      });
    }
  });
}

async function main() {
  const role = process.argv[2] as Role;
  const start = roles[role];
  if (!start) throw new Error(`unknown role ${role}; one of ${Object.keys(roles).join(", ")}`);
  const port = await start();
  watchStalls();
  process.send!({ port });
  // Never outlive the bench that forked us.
  process.on("disconnect", () => process.exit(0));
  process.on("SIGTERM", () => process.exit(0));
}

main().catch((err: unknown) => {
  process.stderr.write(`mesh-servers: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
