import { SpanKind, trace } from "@opentelemetry/api";
import { InMemorySpanExporter } from "@opentelemetry/sdk-trace-base";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startBroker, type RunningBroker } from "../deploy/embedded/kafka/index.js";
import {
  DocumentService,
  DocumentType,
  ProcessingStatus,
  type UploadRequest,
} from "../gen/medmesh/documents/v1/documents_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { startTelemetry } from "../platform/telemetry/sdk.js";
import { startDocuments } from "../services/documents/main.js";
import { startProcessing } from "../services/processing/main.js";
import { paperPdf } from "./fixtures/documents/make-fixtures.js";
import { testEnv } from "./support/backends.js";
import { startTestIdentity, type TestIdentity } from "./support/identity.js";

// The exporter must be in place before any component starts: telemetry starts once per process.
const spans = new InMemorySpanExporter();
const telemetry = startTelemetry({ serviceName: "pipeline-trace-test", exporter: spans, logLevel: "error" });

type Span = ReturnType<InMemorySpanExporter["getFinishedSpans"]>[number];

describe("one trace through the pipeline", () => {
  let broker: RunningBroker;
  let identity: TestIdentity;
  const stops: Array<() => Promise<void>> = [];
  let docs: ReturnType<typeof createMeshClient<typeof DocumentService>>;

  beforeAll(async () => {
    broker = await startBroker({ port: 0, dataDir: null, logLevel: "error" });
    identity = await startTestIdentity();
    const documents = await startDocuments({
      ...testEnv,
      MEDMESH_DATA_DIR: "memory://",
      IDENTITY_TARGET: identity.target,
      KAFKA_BROKERS: broker.address,
    });
    stops.push(documents.stop);
    const worker = await startProcessing({
      ...testEnv,
      MEDMESH_DATA_DIR: "memory://",
      PROCESSING_PORT: "0",
      KAFKA_BROKERS: broker.address,
      DOCUMENTS_TARGET: `127.0.0.1:${documents.port}`,
      IDENTITY_TARGET: identity.target,
      PROCESSING_API_KEY: await identity.serviceApiKey("processing"),
      PROCESSING_CONCURRENCY: "1",
    });
    stops.unshift(worker.stop);
    docs = createMeshClient(DocumentService, `127.0.0.1:${documents.port}`, {
      headers: await identity.bearer("doctor"),
      defaultTimeoutMs: 30_000,
    });
  }, 120_000);

  afterAll(async () => {
    docs?.close();
    for (const stop of stops) await stop();
    await identity?.stop();
    await broker?.stop();
    await telemetry.shutdown();
  });

  it("runs from the upload RPC through the outbox relay, Kafka and the worker to the result RPC", async () => {
    // The caller's own span is the root, as a browser's or a device's would be.
    const { id, traceId } = await trace.getTracer("test").startActiveSpan("client upload", async (root) => {
      async function* upload(): AsyncIterable<UploadRequest> {
        yield {
          part: {
            case: "header",
            value: {
              document: { title: "Traced paper", documentType: DocumentType.RESEARCH_PAPER },
              filename: "paper.pdf",
            },
          },
        } as UploadRequest;
        yield { part: { case: "chunk", value: paperPdf() } } as unknown as UploadRequest;
      }
      const res = await docs.upload(upload());
      root.end();
      return { id: res.document!.id, traceId: root.spanContext().traceId };
    });
    for await (const m of docs.watchDocument({ id }, { timeoutMs: 60_000 })) {
      if (m.status === ProcessingStatus.FAILED) throw new Error(`processing failed: ${m.failure?.message}`);
    }
    expect((await docs.getDocument({ id })).document!.processingStatus).toBe(ProcessingStatus.PROCESSED);

    // Every span of the trace, by id, to walk from the result RPC back to the upload.
    const inTrace = () => spans.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId);
    const find = async (what: string, match: (s: Span) => boolean): Promise<Span> => {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const found = inTrace().find(match);
        if (found) return found;
        if (Date.now() > deadline)
          throw new Error(
            `no ${what} span in trace ${traceId}: ${inTrace()
              .map((s) => s.name)
              .join(", ")}`,
          );
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const server = (rpc: string) => (s: Span) => s.kind === SpanKind.SERVER && s.name === `medmesh.documents.v1.${rpc}`;
    const uploadRpc = await find("Upload server", server("DocumentService/Upload"));
    const send = await find("relay send", (s) => s.kind === SpanKind.PRODUCER && s.name === "document.events send");
    const consume = await find(
      "worker consume",
      (s) =>
        s.kind === SpanKind.CONSUMER &&
        s.name === "document.events process" &&
        s.attributes["messaging.consumer.group.name"] === "processing",
    );
    // A small version's bytes come with the StartProcessing answer (no ReadContent call).
    const start = await find("StartProcessing server", server("DocumentProcessingService/StartProcessing"));
    const result = await find(
      "RecordProcessingResult server",
      server("DocumentProcessingService/RecordProcessingResult"),
    );

    const byId = new Map(inTrace().map((s) => [s.spanContext().spanId, s]));
    const ancestors = (s: Span): Span[] => {
      const chain: Span[] = [];
      for (let p = s.parentSpanContext?.spanId; p && byId.has(p); p = byId.get(p)!.parentSpanContext?.spanId)
        chain.push(byId.get(p)!);
      return chain;
    };
    // The relay's send hangs off the upload; the worker's consumption off the send; the worker's
    // calls back into documents off the consumption.
    expect(ancestors(send)).toContain(uploadRpc);
    expect(consume.parentSpanContext?.spanId).toBe(send.spanContext().spanId);
    expect(ancestors(start)).toContain(consume);
    expect(ancestors(result)).toEqual(expect.arrayContaining([consume, send, uploadRpc]));
    expect(ancestors(result).at(-1)!.name).toBe("client upload");
    // And the DocumentProcessed event the worker publishes carries the same trace onward.
    const processedSend = await find(
      "processed event send",
      (s) => s.kind === SpanKind.PRODUCER && s.name === "document.events send" && s !== send,
    );
    expect(ancestors(processedSend)).toContain(consume);
  }, 120_000);
});
