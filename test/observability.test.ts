import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError } from "@connectrpc/connect";
import { DocumentService } from "../gen/medmesh/documents/v1/documents_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { configureLogging } from "../platform/telemetry/logger.js";
import { startTelemetry } from "../platform/telemetry/sdk.js";
import { startDocuments } from "../services/documents/main.js";
import { testEnv } from "./support/backends.js";
import { startTestIdentity, type TestIdentity } from "./support/identity.js";

// A stand-in OTLP/HTTP collector: it only records what arrives, the exporter is the real one.
const received: Array<{ path: string; type: string; body: Buffer }> = [];
const collector = http.createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    received.push({ path: req.url ?? "", type: String(req.headers["content-type"]), body: Buffer.concat(chunks) });
    res.writeHead(200, { "content-type": "application/x-protobuf" });
    res.end();
  });
});

const lines: Array<Record<string, unknown>> = [];
let telemetry: { shutdown(): Promise<void> };
let stop: () => Promise<void>;
let client: ReturnType<typeof createMeshClient<typeof DocumentService>>;
let identity: TestIdentity;

beforeAll(async () => {
  await new Promise<void>((r) => collector.listen(0, "127.0.0.1", () => r()));
  const endpoint = `http://127.0.0.1:${(collector.address() as { port: number }).port}`;
  telemetry = startTelemetry({ serviceName: "documents", otlpEndpoint: endpoint, logLevel: "info" });
  identity = await startTestIdentity();
  const svc = await startDocuments({
    ...testEnv,
    LOG_LEVEL: "info",
    MEDMESH_DATA_DIR: "memory://",
    IDENTITY_TARGET: identity.target,
  });
  configureLogging({ level: "info", write: (line) => lines.push(JSON.parse(line)) });
  stop = svc.stop;
  client = createMeshClient(DocumentService, `127.0.0.1:${svc.port}`, { headers: await identity.bearer("doctor") });
});

afterAll(async () => {
  client?.close();
  await stop?.();
  await identity?.stop();
  collector.close();
});

describe("observability", () => {
  it("log lines are JSON with the trace id of the call they belong to", async () => {
    const err = await client
      .getDocument({ id: "00000000-0000-4000-8000-000000000000" })
      .catch((e) => ConnectError.from(e));
    expect((err as ConnectError).code).toBe(Code.NotFound);
    const line = lines.find((l) => l.rpc === "medmesh.documents.v1.DocumentService/GetDocument");
    expect(line).toMatchObject({ level: "info", msg: "rpc rejected", code: "NotFound", service: "documents" });
    expect(line!.trace_id).toMatch(/^[0-9a-f]{32}$/);
    expect(JSON.stringify(lines)).not.toContain("stack");
  });

  it("exports spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set", async () => {
    await client.listDocuments({});
    await telemetry.shutdown(); // flushes the batch processor
    const traces = received.filter((r) => r.path === "/v1/traces");
    expect(traces.length).toBeGreaterThan(0);
    expect(traces[0]!.type).toBe("application/x-protobuf");
    const all = Buffer.concat(traces.map((t) => t.body)).toString("latin1");
    expect(all).toContain("medmesh.documents.v1.DocumentService/ListDocuments");
    expect(all).toContain("SELECT documents");
  });
});
