import { afterAll, beforeAll, expect, it } from "vitest";
import { Kafka, logLevel } from "kafkajs";
import { trace } from "@opentelemetry/api";
import { fromBinary } from "@bufbuild/protobuf";
import { DocumentService, DocumentType } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { DocumentUploadedSchema } from "../../gen/medmesh/events/v1/document_events_pb.js";
import { startBroker } from "../../deploy/embedded/kafka/index.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { testEnv } from "../../test/support/backends.js";
import { startTestIdentity, type TestIdentity } from "../../test/support/identity.js";
import { startDocuments } from "./main.js";

let broker: Awaited<ReturnType<typeof startBroker>>;
let identity: TestIdentity;
let stop: () => Promise<void>;
let address: string;

beforeAll(async () => {
  broker = await startBroker({ port: 0, dataDir: null, logLevel: "silent" });
  identity = await startTestIdentity();
  const svc = await startDocuments({
    ...testEnv,
    MEDMESH_DATA_DIR: "memory://",
    IDENTITY_TARGET: identity.target,
    KAFKA_BROKERS: broker.address,
  });
  stop = svc.stop;
  address = `127.0.0.1:${svc.port}`;
});

afterAll(async () => {
  await stop?.();
  await identity?.stop();
  await broker?.stop();
});

it("an upload publishes DocumentUploaded on document.events through the outbox: keyed by the document, CloudEvents headers, the request's trace", async () => {
  const client = createMeshClient(DocumentService, address, { headers: await identity.bearer("doctor") });
  const bytes = Buffer.from("%PDF-1.7\n% a tiny pdf for the event test\n%%EOF\n");
  async function* upload() {
    yield {
      part: {
        case: "header" as const,
        value: { document: { title: "Evented", documentType: DocumentType.REVIEW } } as never,
      },
    };
    yield { part: { case: "chunk" as const, value: bytes } };
  }
  // The caller's own span: the event must carry its trace across Kafka.
  const { traceId, document, version } = await trace
    .getTracer("events-test")
    .startActiveSpan("caller", async (span) => {
      const res = await client.upload(upload());
      span.end();
      return { traceId: span.spanContext().traceId, ...res };
    });
  client.close();

  const kafka = new Kafka({ brokers: [broker.address], clientId: "events-test", logLevel: logLevel.NOTHING });
  const consumer = kafka.consumer({
    groupId: "events-test",
    sessionTimeout: 6_000,
    heartbeatInterval: 500,
    maxWaitTimeInMs: 100,
  });
  await consumer.connect();
  await consumer.subscribe({ topic: "document.events", fromBeginning: true });
  const seen: Array<{ key: string; headers: Record<string, string>; value: Buffer }> = [];
  await consumer.run({
    eachMessage: async ({ message }) => {
      seen.push({
        key: message.key!.toString(),
        headers: Object.fromEntries(Object.entries(message.headers ?? {}).map(([k, v]) => [k, String(v)])),
        value: message.value!,
      });
    },
  });
  await expect.poll(() => seen.length, { timeout: 20_000, interval: 100 }).toBe(1);
  await consumer.disconnect();

  const [event] = seen;
  expect(event!.key).toBe(document!.id);
  expect(event!.headers).toMatchObject({
    ce_specversion: "1.0",
    ce_type: "medmesh.document.uploaded.v1",
    ce_source: "/medmesh/documents",
    "content-type": "application/protobuf; proto=medmesh.events.v1.DocumentUploaded",
  });
  expect(event!.headers.ce_id).toMatch(/^[0-9a-f-]{36}$/);
  expect(event!.headers.traceparent).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
  const uploaded = fromBinary(DocumentUploadedSchema, event!.value);
  expect(uploaded).toMatchObject({
    documentId: document!.id,
    version: 1,
    sha256: version!.sha256,
    sizeBytes: BigInt(bytes.length),
    mimeType: "application/pdf",
  });
});
