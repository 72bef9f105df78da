import { randomBytes } from "node:crypto";
import { SpanKind, trace } from "@opentelemetry/api";
import { InMemorySpanExporter } from "@opentelemetry/sdk-trace-base";
import type { Kafka, Producer } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startBroker, type RunningBroker } from "../../deploy/embedded/kafka/index.js";
import type { Database } from "../../platform/db/database.js";
import { startIdempotentConsumer, type IdempotentConsumer } from "../../platform/events/consumer.js";
import { newEvent, protobufContentType, toKafkaMessage } from "../../platform/events/envelope.js";
import { enqueue, startOutboxRelay, type OutboxRelay } from "../../platform/events/outbox.js";
import { startTelemetry } from "../../platform/telemetry/sdk.js";
import {
  createTopics,
  dbBackends,
  fastConsumer,
  kafkaFor,
  openTestDatabase,
  waitFor,
  type TestDatabase,
  silentLogger as silent,
} from "./helpers.js";

const spans = new InMemorySpanExporter();
const telemetry = startTelemetry({ serviceName: "events-trace-test", exporter: spans, logLevel: "error" });
afterAll(() => telemetry.shutdown());

const tracer = trace.getTracer("trace-test");

describe.each(dbBackends())("trace across Kafka on $name", (backend) => {
  let broker: RunningBroker;
  let kafka: Kafka;
  let producer: Producer;
  let database: Database<TestDatabase>;
  let relay: OutboxRelay;
  let consumer: IdempotentConsumer;
  const topic = `trace-${randomBytes(3).toString("hex")}`;
  const handled = new Map<string, string>();

  beforeAll(async () => {
    broker = await startBroker({ port: 0, dataDir: null });
    kafka = kafkaFor(broker.address);
    database = await openTestDatabase(backend);
    await createTopics(kafka, [{ topic, numPartitions: 2 }]);
    producer = kafka.producer({ idempotent: true });
    await producer.connect();
    relay = startOutboxRelay({ db: database.db, kafka, pollIntervalMs: 50, logger: silent });
    consumer = await startIdempotentConsumer({
      kafka,
      groupId: "trace-g",
      topics: [topic],
      db: database.db,
      backoffMs: () => 10,
      consumerConfig: fastConsumer,
      logger: silent,
      handler: async (e, trx) => {
        await trx.insertInto("effect").values({ event_id: e.id, key: e.key, note: "traced" }).execute();
        handled.set(e.id, trace.getActiveSpan()?.spanContext().spanId ?? "");
      },
    });
  });

  afterAll(async () => {
    await consumer?.stop();
    await relay?.stop();
    await producer?.disconnect();
    await database?.close();
    await broker?.stop();
  });

  it("continues the producing request's trace in the consumer, through the outbox", async () => {
    const { requestTrace, requestSpan, id } = await tracer.startActiveSpan(
      "POST /documents",
      { kind: SpanKind.SERVER },
      async (span) => {
        const e = await database.db.transaction().execute((trx) =>
          enqueue(trx, {
            topic,
            type: "medmesh.document.uploaded.v1",
            source: "/medmesh/documents",
            key: "doc-1",
            payload: new Uint8Array([1, 2, 3]),
            contentType: protobufContentType("medmesh.events.v1.DocumentUploaded"),
          }),
        );
        span.end();
        return { requestTrace: span.spanContext().traceId, requestSpan: span.spanContext().spanId, id: e.id };
      },
    );
    relay.wake();
    await waitFor("the event to be handled", () => handled.has(id));

    const consumerSpan = await findSpan(
      (s) => s.kind === SpanKind.CONSUMER && s.attributes["messaging.message.id"] === id,
    );
    expect(consumerSpan.name).toBe(`${topic} process`);
    expect(consumerSpan.spanContext().traceId).toBe(requestTrace);
    // request -> the relay's send of this event -> the consumer.
    const send = await findSpan((s) => s.name === `${topic} send` && s.attributes["messaging.message.id"] === id);
    expect([send.kind, send.spanContext().traceId, send.parentSpanContext?.spanId]).toEqual([
      SpanKind.PRODUCER,
      requestTrace,
      requestSpan,
    ]);
    expect(consumerSpan.parentSpanContext?.spanId).toBe(send.spanContext().spanId);
    expect(consumerSpan.attributes["messaging.consumer.group.name"]).toBe("trace-g");
    // The handler ran inside the consumer span, so its SQL is part of the same trace.
    expect(handled.get(id)).toBe(consumerSpan.spanContext().spanId);
    const insert = await findSpan(
      (s) =>
        s.name.startsWith("INSERT") &&
        s.parentSpanContext?.spanId === consumerSpan.spanContext().spanId &&
        String(s.attributes["db.statement"]).includes("effect"),
    );
    expect(insert.spanContext().traceId).toBe(requestTrace);
    // The relay's batch publish is its own trace, linked to every request it carries.
    const publish = await findSpan(
      (s) => s.name === "outbox publish" && s.links.some((l) => l.context.spanId === requestSpan),
    );
    expect(publish.kind).toBe(SpanKind.PRODUCER);
  });

  it("starts a new trace for an event that carries none", async () => {
    const e = newEvent({
      type: "medmesh.document.uploaded.v1",
      source: "/medmesh/documents",
      key: "doc-2",
      payload: new Uint8Array([4]),
      contentType: protobufContentType("medmesh.events.v1.DocumentUploaded"),
    });
    await producer.send({ topic, acks: -1, messages: [toKafkaMessage(e)] });
    await waitFor("the event to be handled", () => handled.has(e.id));
    const consumerSpan = await findSpan(
      (s) => s.kind === SpanKind.CONSUMER && s.attributes["messaging.message.id"] === e.id,
    );
    expect(consumerSpan.parentSpanContext).toBeUndefined();
    expect(consumerSpan.spanContext().traceId).not.toBe("00000000000000000000000000000000");
  });
});

type Finished = ReturnType<InMemorySpanExporter["getFinishedSpans"]>[number];

async function findSpan(match: (s: Finished) => boolean): Promise<Finished> {
  let found: Finished | undefined;
  await waitFor("a span", () => (found = spans.getFinishedSpans().find(match)) !== undefined, 10_000);
  return found!;
}
