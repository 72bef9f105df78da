import { MeshTestService } from "../../gen/medmesh/meshtest/v1/meshtest_pb.js";
import { startGateway } from "../../gateway/main.js";
import { meshInterceptors } from "../../platform/grpc/interceptors/index.js";
import { register, startGrpcServer } from "../../platform/grpc/server.js";
import { isEntryPoint, runMain } from "../../platform/lifecycle/run-main.js";
import { testEnv } from "./backends.js";
import { meshTestService } from "./meshtest-service.js";

/**
 * The conformance service and a gateway in front of it, in a process of their own: a test that
 * spawns this sees a crash as the child exiting, which an in-process server would hide (or take
 * the test runner down with it). Prints `meshtest <url>` and `gateway <url>` once both listen.
 */
async function start() {
  const server = await startGrpcServer({
    name: "meshtest",
    host: "127.0.0.1",
    port: 0,
    services: [register(MeshTestService, meshTestService({ cancelledStreams: 0, waitsCancelled: 0 }))],
    interceptors: meshInterceptors({ component: "meshtest" }),
    deadlines: { defaultUnaryMs: 5_000, maxUnaryMs: 10_000 },
    maxMessageBytes: 1024 * 1024,
    // Tests of idle connections shorten the bound rather than wait five minutes.
    maxConnectionIdleMs: process.env.MESHTEST_MAX_CONNECTION_IDLE_MS
      ? Number(process.env.MESHTEST_MAX_CONNECTION_IDLE_MS)
      : undefined,
  });
  const gateway = await startGateway(
    { ...testEnv, LOG_LEVEL: process.env.LOG_LEVEL ?? "error", MESHTEST_TARGET: `127.0.0.1:${server.port}` },
    { services: [MeshTestService] },
  );
  return {
    endpoints: { meshtest: `grpc://127.0.0.1:${server.port}`, gateway: `http://127.0.0.1:${gateway.port}` },
    async stop() {
      await gateway.stop();
      await server.shutdown(1_000);
    },
  };
}

if (isEntryPoint(import.meta.url)) void runMain("meshtest", start);
