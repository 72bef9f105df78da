import { randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fromBinary } from "@bufbuild/protobuf";
import { Kafka, logLevel, type Producer } from "kafkajs";
import {
  CitationType,
  DocumentService,
  DocumentType,
  EntityType,
  FailureReason,
  ProcessingStatus,
  type ProcessingResult,
  type UploadRequest,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import {
  DocumentFailedSchema,
  DocumentProcessedSchema,
  DocumentUploadedSchema,
} from "../../gen/medmesh/events/v1/document_events_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { startBroker } from "../../deploy/embedded/kafka/index.js";
import { openDatabase } from "../../platform/db/database.js";
import { DlqHeaders, eventType, type InboxDatabase } from "../../platform/events/index.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { startDocuments } from "../documents/main.js";
import { backends, testEnv } from "../../test/support/backends.js";
import { recordTopics, type Received } from "../../test/events/helpers.js";
import { startTestIdentity, type TestIdentity } from "../../test/support/identity.js";
import { FIXTURES, PAPER, paperPdf, type FixtureName } from "../../test/fixtures/documents/make-fixtures.js";
import { startProcessing } from "./main.js";
import { INLINE_CONTENT_MAX_BYTES } from "./worker.js";
import { outcomeEventId } from "./result.js";

type Docs = ReturnType<typeof createMeshClient<typeof DocumentService>>;

const UPLOADED_TYPE = eventType(DocumentUploadedSchema);
const PROCESSED_TYPE = eventType(DocumentProcessedSchema);
const FAILED_TYPE = eventType(DocumentFailedSchema);
const TOPIC = "document.events";
const DLQ = "document.events.dlq";
const done = new Set([ProcessingStatus.PROCESSED, ProcessingStatus.FAILED]);

describe.each(backends())("the processing worker on $name", (backend) => {
  const blobDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-processing-test-"));
  const apiKey = `mmk_${randomBytes(32).toString("base64url")}`;
  /** Documents whose analysis the test makes fail, and the attempts seen for each. */
  const failing = new Set<string>();
  const attempts = new Map<string, number[]>();
  const stops: Array<() => Promise<void>> = [];
  const processingSchema = `processing_t${randomBytes(4).toString("hex")}`;
  let broker: Awaited<ReturnType<typeof startBroker>>;
  let identity: TestIdentity;
  let doctor: Docs;
  let processingPort: number;
  let kafka: Kafka;
  let producer: Producer;
  let events: Received[];

  beforeAll(async () => {
    broker = await startBroker({ port: 0, dataDir: null, logLevel: "silent" });
    stops.unshift(() => broker.stop());
    // The worker's key is provisioned the way deployments do it: identity makes sure it exists.
    identity = await startTestIdentity({ IDENTITY_BOOTSTRAP_API_KEYS: `processing=${apiKey}` });
    stops.unshift(() => identity.stop());
    const docs = await startDocuments({
      ...testEnv,
      ...backend.env,
      IDENTITY_TARGET: identity.target,
      KAFKA_BROKERS: broker.address,
      BLOB_DIR: blobDir,
    });
    stops.unshift(docs.stop);
    const worker = await startProcessing(
      {
        ...testEnv,
        ...(backend.env.DATABASE_URL ? { DATABASE_URL: backend.env.DATABASE_URL } : { MEDMESH_DATA_DIR: "memory://" }),
        PROCESSING_DB_SCHEMA: processingSchema,
        PROCESSING_PORT: "0",
        KAFKA_BROKERS: broker.address,
        DOCUMENTS_TARGET: `127.0.0.1:${docs.port}`,
        IDENTITY_TARGET: identity.target,
        PROCESSING_API_KEY: apiKey,
        // 100 ms, then 200 ms: the real schedule (2 s, 4 s) in miniature.
        PROCESSING_RETRY_BASE_MS: "50",
      },
      {
        beforeAnalysis(documentId, _version, delivery) {
          if (!failing.has(documentId)) return;
          attempts.set(documentId, [...(attempts.get(documentId) ?? []), delivery.attempt]);
          throw new Error("injected: the analysis backend is down");
        },
      },
    );
    stops.unshift(worker.stop);
    processingPort = worker.port;
    doctor = createMeshClient(DocumentService, `127.0.0.1:${docs.port}`, {
      headers: await identity.bearer("doctor"),
      defaultTimeoutMs: 20_000,
    });
    kafka = new Kafka({ brokers: [broker.address], clientId: "processing-test", logLevel: logLevel.NOTHING });
    producer = kafka.producer();
    await producer.connect();
    stops.unshift(() => producer.disconnect());
    const recorder = await recordTopics(kafka, [TOPIC, DLQ]);
    stops.unshift(() => recorder.consumer.disconnect());
    events = recorder.received;
  });

  afterAll(async () => {
    doctor?.close();
    for (const stop of stops) await stop();
    rmSync(blobDir, { recursive: true, force: true });
  });

  function chunked(bytes: Buffer): UploadRequest["part"][] {
    const out: UploadRequest["part"][] = [];
    for (let i = 0; i < bytes.length; i += 64 * 1024)
      out.push({ case: "chunk", value: bytes.subarray(i, i + 64 * 1024) });
    return out;
  }

  /** Uploads a fixture as a new version of `documentId`, or as a new document. */
  async function upload(name: FixtureName, documentId?: string): Promise<{ id: string; version: number }> {
    const spec = FIXTURES[name];
    const header = documentId
      ? { documentId, filename: spec.file, declaredMimeType: spec.declaredMime }
      : {
          document: { title: `Fixture ${name}`, documentType: DocumentType.RESEARCH_PAPER },
          filename: spec.file,
          declaredMimeType: spec.declaredMime,
        };
    async function* parts() {
      for (const part of [{ case: "header", value: header } as UploadRequest["part"], ...chunked(spec.bytes())])
        yield { part } as never;
    }
    const res = await doctor.upload(parts());
    return { id: res.document!.id, version: res.version!.version };
  }

  async function settled(id: string, version: number) {
    await expect
      .poll(
        async () => {
          const d = (await doctor.getDocument({ id })).document!;
          return d.version === version && done.has(d.processingStatus);
        },
        { timeout: 30_000, interval: 50 },
      )
      .toBe(true);
    return (await doctor.getProcessingResult({ documentId: id, version })).outcome!;
  }

  const on = (topic: string, key: string, type?: string) =>
    events.filter(
      (e) => e.topic === topic && e.message.key?.toString() === key && (!type || e.headers.ce_type === type),
    );

  async function published(key: string, type: string, version: number) {
    const decode = (e: Received) =>
      fromBinary(type === PROCESSED_TYPE ? DocumentProcessedSchema : DocumentFailedSchema, e.message.value!);
    await expect
      .poll(() => on(TOPIC, key, type).filter((e) => decode(e).version === version).length, {
        timeout: 20_000,
        interval: 50,
      })
      .toBeGreaterThan(0);
    return on(TOPIC, key, type).filter((e) => decode(e).version === version);
  }

  it("serves grpc.health.v1 and says SERVING once it consumes", async () => {
    const health = createMeshClient(Health, `127.0.0.1:${processingPort}`);
    try {
      expect((await health.check({ service: "" }, { timeoutMs: 5_000 })).status).toBe(
        HealthCheckResponse_ServingStatus.SERVING,
      );
    } finally {
      health.close();
    }
  });

  it("a multi-page PDF paper is PROCESSED with its entities, citations, abstract, keywords, specialty and quality; DocumentProcessed continues the upload's trace", async () => {
    const { id } = await upload("paper");
    const outcome = await settled(id, 1);
    expect((await doctor.getDocument({ id })).document!.processingStatus).toBe(ProcessingStatus.PROCESSED);
    expect(outcome.outcome.case).toBe("result");
    const r = outcome.outcome.value as ProcessingResult;
    expect(r).toMatchObject({
      mimeType: "application/pdf",
      pages: 3,
      language: "en",
      specialty: "cardiology",
      textTruncated: false,
      entitiesTruncated: false,
    });
    expect(r.wordCount).toBeGreaterThan(300);
    expect(r.abstract).toContain("type 2 diabetes mellitus");
    expect(r.keywords).toEqual(PAPER.keywords);
    const canonical = new Set(r.entities.map((e) => e.canonical.toLowerCase()));
    for (const term of ["myocardial infarction", "metformin", "heart failure", "hypertension"])
      expect(canonical, term).toContain(term);
    expect(r.entities.every((e) => r.text.slice(e.start, e.end) === e.text)).toBe(true);
    expect(new Set(r.entities.map((e) => e.type))).toEqual(
      new Set([EntityType.DISEASE, EntityType.DRUG, EntityType.PROCEDURE, EntityType.ANATOMY]),
    );
    expect(r.citations.filter((c) => c.type === CitationType.DOI).map((c) => c.id)).toEqual(
      PAPER.dois.map((d) => d.toLowerCase()),
    );
    expect(
      r.citations
        .filter((c) => c.type === CitationType.PMID)
        .map((c) => c.id)
        .sort(),
    ).toEqual([...PAPER.pmids].sort());
    expect(r.citations.filter((c) => c.type === CitationType.PMCID).map((c) => c.id)).toEqual([PAPER.pmcid]);
    expect(r.sections).toEqual(
      expect.arrayContaining(["introduction", "methods", "results", "discussion", "references"]),
    );
    expect(r.quality!.score).toBeGreaterThan(0.6);
    expect(Object.keys(r.quality!.components).sort()).toEqual(
      ["abstract", "citations", "entityDensity", "keywords", "length", "references", "structure"].sort(),
    );

    const [event, ...more] = await published(id, PROCESSED_TYPE, 1);
    expect(more).toEqual([]);
    expect(event!.headers).toMatchObject({
      ce_source: "/medmesh/processing",
      ce_id: outcomeEventId(PROCESSED_TYPE, id, 1),
      "content-type": "application/protobuf; proto=medmesh.events.v1.DocumentProcessed",
    });
    const processed = fromBinary(DocumentProcessedSchema, event!.message.value!);
    expect(processed).toMatchObject({
      documentId: id,
      version: 1,
      mimeType: "application/pdf",
      pages: 3,
      specialty: "cardiology",
      citationCount: r.citations.length,
      distinctEntityCount: r.entitySummary.length,
    });
    expect(processed.entityCount).toBe(r.entitySummary.reduce((n, s) => n + s.count, 0));
    expect(processed.qualityScore).toBeCloseTo(r.quality!.score, 5);
    const [uploadedEvent] = on(TOPIC, id, UPLOADED_TYPE);
    const traceOf = (h: Record<string, string>) => h.traceparent?.split("-")[1];
    expect(traceOf(event!.headers)).toBeDefined();
    expect(traceOf(event!.headers)).toBe(traceOf(uploadedEvent!.headers));
  });

  it("a version too big to come with StartProcessing's answer is read with ReadContent and processed alike", async () => {
    // The paper with comment lines after its end: pdf.js reads it the same, and it is over the limit.
    const line = "%" + "x".repeat(1022) + "\n";
    const bytes = Buffer.concat([paperPdf(), Buffer.from(line.repeat(INLINE_CONTENT_MAX_BYTES / line.length + 8))]);
    expect(bytes.length).toBeGreaterThan(INLINE_CONTENT_MAX_BYTES);
    const header = {
      document: { title: "Padded paper", documentType: DocumentType.RESEARCH_PAPER },
      filename: "padded.pdf",
      declaredMimeType: "application/pdf",
    };
    async function* parts() {
      for (const part of [{ case: "header", value: header } as UploadRequest["part"], ...chunked(bytes)])
        yield { part } as never;
    }
    const id = (await doctor.upload(parts())).document!.id;
    const outcome = await settled(id, 1);
    expect(outcome.outcome.case).toBe("result");
    expect(outcome.outcome.value as ProcessingResult).toMatchObject({ pages: 3, specialty: "cardiology" });
    expect(await published(id, PROCESSED_TYPE, 1)).toHaveLength(1);
  });

  it.each([
    ["plain text", "text" as const, /^text\/plain/, "hypertension", "nephrology"],
    ["HTML", "html" as const, /^text\/html/, "asthma", "pulmonology"],
  ])("%s is PROCESSED", async (_what, fixture, mime, term, specialty) => {
    const { id } = await upload(fixture);
    const outcome = await settled(id, 1);
    expect(outcome.outcome.case).toBe("result");
    const r = outcome.outcome.value as ProcessingResult;
    expect(r.mimeType).toMatch(mime);
    expect(r.entities.map((e) => e.canonical.toLowerCase())).toContain(term);
    expect(r.specialties.map((s) => s.specialty)).toContain(specialty);
    expect(r.abstract.length).toBeGreaterThan(20);
    expect(await published(id, PROCESSED_TYPE, 1)).toHaveLength(1);
  });

  it.each([
    ["an image-only (scanned) PDF", "imageOnly" as const, FailureReason.IMAGE_ONLY, /OCR/],
    ["an image file", "png" as const, FailureReason.IMAGE_ONLY, /OCR/],
    ["an encrypted PDF", "encrypted" as const, FailureReason.ENCRYPTED, /password/i],
    ["a corrupt PDF", "garbled" as const, FailureReason.CORRUPT, /./],
    ["a PDF whose pages draw nothing", "blank" as const, FailureReason.EMPTY, /no text/],
  ])("%s is FAILED with its reason, and DocumentFailed says why", async (_what, fixture, reason, sentence) => {
    const { id } = await upload(fixture);
    const outcome = await settled(id, 1);
    expect((await doctor.getDocument({ id })).document!.processingStatus).toBe(ProcessingStatus.FAILED);
    expect(outcome.outcome).toMatchObject({ case: "failure", value: { reason } });
    expect((outcome.outcome.value as { message: string }).message).toMatch(sentence);
    const [event, ...more] = await published(id, FAILED_TYPE, 1);
    expect(more).toEqual([]);
    expect(event!.headers.ce_id).toBe(outcomeEventId(FAILED_TYPE, id, 1));
    expect(fromBinary(DocumentFailedSchema, event!.message.value!)).toMatchObject({
      documentId: id,
      version: 1,
      reason,
    });
  });

  it("the same DocumentUploaded delivered again, under its own id and under a fresh one, leaves one outcome and one DocumentProcessed", async () => {
    const { id } = await upload("text");
    const first = await settled(id, 1);
    await published(id, PROCESSED_TYPE, 1);
    const [original] = on(TOPIC, id, UPLOADED_TYPE);
    const { key, value } = original!.message;
    await producer.send({
      topic: TOPIC,
      messages: [
        { key, value, headers: original!.headers },
        { key, value, headers: { ...original!.headers, ce_id: randomUUID() } },
      ],
    });
    // A later event on the same key (so the same partition) is handled only after both copies.
    await upload("html", id);
    await settled(id, 2);
    await published(id, PROCESSED_TYPE, 2);

    const processedV1 = on(TOPIC, id, PROCESSED_TYPE).filter(
      (e) => fromBinary(DocumentProcessedSchema, e.message.value!).version === 1,
    );
    expect(processedV1.map((e) => e.headers.ce_id)).toEqual([outcomeEventId(PROCESSED_TYPE, id, 1)]);
    const again = (await doctor.getProcessingResult({ documentId: id, version: 1 })).outcome!;
    expect(again.recordTime).toEqual(first.recordTime);
    expect(on(DLQ, id)).toEqual([]);
  });

  // Only the real server is reachable from here: the embedded database lives inside the worker.
  it.runIf(backend.name === "postgres")(
    "the worker's own DocumentProcessed, read back from the topic, is passed over without an inbox row",
    async () => {
      const { id } = await upload("text");
      await settled(id, 1);
      const [uploaded] = on(TOPIC, id, UPLOADED_TYPE);
      const [processed] = await published(id, PROCESSED_TYPE, 1);
      // The group has committed past the outcome event: the worker has seen it.
      const admin = kafka.admin();
      await admin.connect();
      try {
        await expect
          .poll(
            async () => {
              const [t] = await admin.fetchOffsets({ groupId: "processing", topics: [TOPIC] });
              const p = t!.partitions.find((x) => x.partition === processed!.partition);
              return Number(p?.offset ?? -1) > Number(processed!.offset);
            },
            { timeout: 20_000, interval: 100 },
          )
          .toBe(true);
      } finally {
        await admin.disconnect();
      }
      const pg = await openDatabase<InboxDatabase>({
        url: backend.env.DATABASE_URL,
        dataDir: "memory://",
        schema: processingSchema,
      });
      try {
        const ids = (await pg.db.selectFrom("inbox").select("event_id").execute()).map((r) => r.event_id);
        expect(ids).toContain(uploaded!.headers.ce_id);
        expect(ids).not.toContain(processed!.headers.ce_id);
      } finally {
        await pg.close();
      }
    },
  );

  it("a poison message goes to document.events.dlq at once, with the error, and the partition keeps moving", async () => {
    const { id } = await upload("text");
    await settled(id, 1);
    const ce = (extra: Record<string, string>) => ({
      ce_specversion: "1.0",
      ce_id: randomUUID(),
      ce_type: UPLOADED_TYPE,
      ce_source: "/medmesh/documents",
      ce_time: new Date().toISOString(),
      "content-type": "application/protobuf; proto=medmesh.events.v1.DocumentUploaded",
      ...extra,
    });
    await producer.send({
      topic: TOPIC,
      messages: [
        // Not a CloudEvent at all.
        { key: id, value: "not an event" },
        // A CloudEvent whose protobuf is cut off inside its first field.
        { key: id, value: Buffer.from([0x0a, 0xff, 0x01, 0x61]), headers: ce({}) },
      ],
    });
    const { version } = await upload("html", id);
    await settled(id, version);
    await published(id, PROCESSED_TYPE, version);

    const dead = on(DLQ, id);
    expect(dead.map((d) => d.headers[DlqHeaders.reason])).toEqual(["invalid", "invalid"]);
    expect(dead[0]!.headers[DlqHeaders.error]).toMatch(/missing header ce_specversion/);
    expect(dead[1]!.headers[DlqHeaders.error]).toMatch(/DocumentUploaded payload does not decode/);
    expect(dead[1]!.message.value!.equals(Buffer.from([0x0a, 0xff, 0x01, 0x61]))).toBe(true);
    for (const d of dead)
      expect(d.headers).toMatchObject({ [DlqHeaders.group]: "processing", [DlqHeaders.topic]: TOPIC });
    const later = on(TOPIC, id, UPLOADED_TYPE).find(
      (e) =>
        e.headers.ce_source === "/medmesh/documents" &&
        e.headers.ce_id !== dead[1]!.headers.ce_id &&
        fromBinary(DocumentUploadedSchema, e.message.value!).version === version,
    )!;
    expect(dead.map((d) => d.headers[DlqHeaders.partition])).toEqual([
      String(later.partition),
      String(later.partition),
    ]);
  });

  it("a handler that keeps failing is tried 3 times with backoff, then dead-lettered; the document says FAILED processing_error, and a replay publishes that", async () => {
    const created = await doctor.createDocument({
      document: { title: "Fails every time", documentType: DocumentType.REVIEW },
    });
    const id = created.document!.id;
    failing.add(id);
    await upload("text", id);
    await expect.poll(() => on(DLQ, id).length, { timeout: 30_000, interval: 50 }).toBe(1);
    expect(attempts.get(id)).toEqual([1, 2, 3]);
    const [dead] = on(DLQ, id);
    expect(dead!.headers).toMatchObject({
      [DlqHeaders.reason]: "failed",
      [DlqHeaders.attempts]: "3",
      [DlqHeaders.group]: "processing",
      [DlqHeaders.topic]: TOPIC,
      ce_type: UPLOADED_TYPE,
    });
    expect(dead!.headers[DlqHeaders.error]).toContain("injected: the analysis backend is down");
    const outcome = await settled(id, 1);
    expect(outcome.outcome).toMatchObject({ case: "failure", value: { reason: FailureReason.PROCESSING_ERROR } });
    expect((await doctor.getDocument({ id })).document!.processingStatus).toBe(ProcessingStatus.FAILED);
    // The attempt that recorded the failure rolled back: nothing was published for it.
    expect(on(TOPIC, id, FAILED_TYPE)).toEqual([]);

    // Replaying the dead letter (its original headers are all there) publishes what is on record.
    failing.delete(id);
    const replay = Object.fromEntries(Object.entries(dead!.headers).filter(([k]) => !k.startsWith("dlq_")));
    await producer.send({
      topic: TOPIC,
      messages: [{ key: dead!.message.key, value: dead!.message.value, headers: replay }],
    });
    const [failed] = await published(id, FAILED_TYPE, 1);
    expect(fromBinary(DocumentFailedSchema, failed!.message.value!).reason).toBe(FailureReason.PROCESSING_ERROR);
    expect(attempts.get(id)).toEqual([1, 2, 3]);
  });
});
