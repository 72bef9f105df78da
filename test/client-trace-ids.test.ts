import { create, toBinary } from "@bufbuild/protobuf";
import { Metadata, Server, ServerCredentials, type ServerUnaryCall, type sendUnaryData } from "@grpc/grpc-js";
import { context, trace, TraceFlags } from "@opentelemetry/api";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EchoResponseSchema, MeshTestService } from "../gen/medmesh/meshtest/v1/meshtest_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { startTelemetry } from "../platform/telemetry/sdk.js";
import { tracingMode } from "../platform/telemetry/tracing-mode.js";

// With an SDK that exports nowhere (every component's default), outgoing calls make no SDK span
// but must still carry the trace: the caller's trace id, a span id of the call's own.
describe("outgoing calls with telemetry on and nothing exported", () => {
  const seen: Metadata[] = [];
  const server = new Server();
  let telemetry: { shutdown(): Promise<void> };
  let client: ReturnType<typeof createMeshClient<typeof MeshTestService>>;

  beforeAll(async () => {
    telemetry = startTelemetry({ serviceName: "client-trace-ids", logLevel: "error" });
    const pass = (b: Buffer) => b;
    server.addService(
      {
        Echo: {
          path: `/${MeshTestService.typeName}/Echo`,
          requestStream: false,
          responseStream: false,
          requestSerialize: pass,
          requestDeserialize: pass,
          responseSerialize: pass,
          responseDeserialize: pass,
        },
      },
      {
        Echo: (call: ServerUnaryCall<Buffer, Buffer>, callback: sendUnaryData<Buffer>) => {
          seen.push(call.metadata);
          callback(null, Buffer.from(toBinary(EchoResponseSchema, create(EchoResponseSchema, { text: "ok" }))));
        },
      },
    );
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    client = createMeshClient(MeshTestService, `127.0.0.1:${port}`, { headers: { "x-from-client": "base" } });
  });

  afterAll(async () => {
    client?.close();
    server.forceShutdown();
    await telemetry?.shutdown();
  });

  it("sends the caller's trace id with a new span id, and the client's and the call's headers", async () => {
    expect(tracingMode()).toBe("ids");
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    const parentSpanId = "00f067aa0ba902b7";
    const parent = trace.setSpanContext(context.active(), {
      traceId,
      spanId: parentSpanId,
      traceFlags: TraceFlags.SAMPLED,
    });
    await context.with(parent, () => client.echo({ text: "hi" }, { headers: { "x-per-call": "yes" } }));
    await client.echo({ text: "no parent" });

    const [withParent, withoutParent] = seen.map((md) => String(md.get("traceparent")[0] ?? ""));
    expect(withParent).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
    expect(withParent).not.toContain(parentSpanId);
    expect(withoutParent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    expect(withoutParent).not.toContain(traceId);
    expect(seen[0]!.get("x-from-client")).toEqual(["base"]);
    expect(seen[0]!.get("x-per-call")).toEqual(["yes"]);
    expect(seen[1]!.get("x-per-call")).toEqual([]);
  });
});
