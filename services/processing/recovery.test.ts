import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Kafka, logLevel } from "kafkajs";
import {
  DocumentService,
  DocumentType,
  ProcessingStatus,
  type UploadRequest,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import { startBroker } from "../../deploy/embedded/kafka/index.js";
import { DlqHeaders, PoisonMessageError } from "../../platform/events/index.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { startDocuments } from "../documents/main.js";
import { backends, testEnv } from "../../test/support/backends.js";
import { freePort } from "../../test/support/embedded-mesh.js";
import { recordTopics, type Received } from "../../test/events/helpers.js";
import { startTestIdentity, type TestIdentity } from "../../test/support/identity.js";
import { FIXTURES } from "../../test/fixtures/documents/make-fixtures.js";
import { main as dlqReplay } from "./dlq-replay.js";
import { startProcessing } from "./main.js";
import { DocumentUploadedSchema } from "../../gen/medmesh/events/v1/document_events_pb.js";
import { eventType } from "../../platform/events/index.js";

const UPLOADED_TYPE = eventType(DocumentUploadedSchema);

type Docs = ReturnType<typeof createMeshClient<typeof DocumentService>>;
type Started = Awaited<ReturnType<typeof startDocuments>>;

const TOPIC = "document.events";
const DLQ = "document.events.dlq";

/**
 * How the pipeline recovers from what used to strand documents: documents restarting while an
 * upload is in flight, an upload event that never reached the worker, and a dead letter.
 * Documents keeps its data across its restart (a PGlite directory, or the Postgres schema), on a
 * fixed port, as a restarted pod would.
 */
describe.each(backends())("pipeline recovery on $name", (backend) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "medmesh-recovery-test-"));
  const apiKey = `mmk_${randomBytes(32).toString("base64url")}`;
  const groupId = `processing-${randomBytes(3).toString("hex")}`;
  const processingSchema = `processing_t${randomBytes(4).toString("hex")}`;
  /** Documents whose first analysis stops documents (restarted by the test). */
  const outage = new Map<string, () => void>();
  /** Documents the worker refuses as unreadable (a worker bug that dead-letters a valid upload). */
  const refused = new Set<string>();
  const stops: Array<() => Promise<void>> = [];
  let broker: Awaited<ReturnType<typeof startBroker>>;
  let identity: TestIdentity;
  let docs: Started;
  let docsEnv: Record<string, string>;
  let worker: { stop(): Promise<void> } | undefined;
  let doctor: Docs;
  let kafka: Kafka;
  let events: Received[];

  const startWorker = async () => {
    worker = await startProcessing(
      {
        ...testEnv,
        ...(backend.env.DATABASE_URL ? { DATABASE_URL: backend.env.DATABASE_URL } : { MEDMESH_DATA_DIR: "memory://" }),
        PROCESSING_DB_SCHEMA: processingSchema,
        PROCESSING_PORT: "0",
        PROCESSING_GROUP_ID: groupId,
        KAFKA_BROKERS: broker.address,
        DOCUMENTS_TARGET: docsEnv.DOCUMENTS_PORT ? `127.0.0.1:${docsEnv.DOCUMENTS_PORT}` : "",
        IDENTITY_TARGET: identity.target,
        PROCESSING_API_KEY: apiKey,
        PROCESSING_CONCURRENCY: "1",
        // Three tries 50 ms apart: the old budget, which any restart of documents outlasted.
        PROCESSING_RETRY_BASE_MS: "25",
        PROCESSING_RETRY_MAX_MS: "400",
        PROCESSING_SESSION_TIMEOUT_MS: "6000",
      },
      {
        async beforeAnalysis(documentId) {
          if (refused.has(documentId)) throw new PoisonMessageError("injected: refused a valid upload");
          const stopDocuments = outage.get(documentId);
          if (!stopDocuments) return;
          outage.delete(documentId);
          await docs.stop();
          stopDocuments();
        },
      },
    );
  };

  beforeAll(async () => {
    broker = await startBroker({ port: 0, dataDir: null, logLevel: "silent" });
    stops.unshift(() => broker.stop());
    identity = await startTestIdentity({ IDENTITY_BOOTSTRAP_API_KEYS: `processing=${apiKey}` });
    stops.unshift(() => identity.stop());
    docsEnv = {
      ...testEnv,
      ...backend.env,
      ...(backend.env.DATABASE_URL ? {} : { MEDMESH_DATA_DIR: path.join(dir, "data") }),
      DOCUMENTS_PORT: String(await freePort()),
      IDENTITY_TARGET: identity.target,
      KAFKA_BROKERS: broker.address,
      BLOB_DIR: path.join(dir, "blobs"),
      // The test reconciles by hand, with a threshold it can wait out.
      DOCUMENTS_RECONCILE_INTERVAL_MS: "0",
      DOCUMENTS_STUCK_AFTER_MS: "300",
    };
    docs = await startDocuments(docsEnv);
    stops.unshift(() => docs.stop());
    await startWorker();
    stops.unshift(() => worker!.stop());
    doctor = createMeshClient(DocumentService, `127.0.0.1:${docsEnv.DOCUMENTS_PORT}`, {
      headers: await identity.bearer("doctor"),
      defaultTimeoutMs: 20_000,
    });
    kafka = new Kafka({ brokers: [broker.address], clientId: "recovery-test", logLevel: logLevel.NOTHING });
    const recorder = await recordTopics(kafka, [TOPIC, DLQ]);
    stops.unshift(() => recorder.consumer.disconnect());
    events = recorder.received;
  });

  afterAll(async () => {
    doctor?.close();
    for (const stop of stops) await stop().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  async function upload(title: string): Promise<string> {
    const spec = FIXTURES.text;
    async function* parts() {
      yield {
        part: {
          case: "header",
          value: {
            document: { title, documentType: DocumentType.OTHER },
            filename: spec.file,
            declaredMimeType: spec.declaredMime,
          },
        },
      } as UploadRequest;
      yield { part: { case: "chunk", value: spec.bytes() } } as never;
    }
    return (await doctor.upload(parts())).document!.id;
  }

  const statusOf = async (id: string) => (await doctor.getDocument({ id })).document!.processingStatus;
  const on = (topic: string, key: string) =>
    events.filter((e) => e.topic === topic && e.message.key?.toString() === key);

  async function processed(id: string): Promise<void> {
    await expect.poll(() => statusOf(id), { timeout: 30_000, interval: 100 }).toBe(ProcessingStatus.PROCESSED);
  }

  it("documents stopping while an upload is in flight, and coming back, leaves the document PROCESSED and nothing in the DLQ", async () => {
    let stopped!: () => void;
    const down = new Promise<void>((r) => (stopped = r));
    // The outage starts between StartProcessing and ReadContent: the worker holds the event.
    const id = await upload("In flight during a restart");
    outage.set(id, stopped);
    await down;
    // Several times the old retry budget (25 ms × 2^n: 50 ms, 100 ms) with nobody answering.
    await new Promise((r) => setTimeout(r, 3_000));
    docs = await startDocuments(docsEnv);
    await processed(id);
    expect(on(DLQ, id)).toEqual([]);
    const outcome = (await doctor.getProcessingResult({ documentId: id, version: 1 })).outcome!;
    expect(outcome.outcome.case).toBe("result");
  });

  it("an upload event that never reached the worker is re-driven by documents after the threshold and the document is PROCESSED", async () => {
    // The worker is away while the event goes by, and its group's position then moves past it:
    // the event is lost to the worker, as if it had never been published.
    await worker!.stop();
    const id = await upload("Lost on the way");
    await expect.poll(() => on(TOPIC, id).length, { timeout: 20_000, interval: 50 }).toBe(1);
    const admin = kafka.admin();
    await admin.connect();
    try {
      const ends = await admin.fetchTopicOffsets(TOPIC);
      await admin.setOffsets({
        groupId,
        topic: TOPIC,
        partitions: ends.map((p) => ({ partition: p.partition, offset: p.high })),
      });
    } finally {
      await admin.disconnect();
    }
    await startWorker();
    // Past the threshold (300 ms) since its upload, with no sign of life.
    await new Promise((r) => setTimeout(r, 400));
    expect(await statusOf(id)).toBe(ProcessingStatus.UPLOADED);
    expect(await docs.reconcile()).toEqual({ redriven: 1, failed: 0 });
    await processed(id);
    const uploads = on(TOPIC, id).filter((e) => e.headers.ce_type === UPLOADED_TYPE);
    expect(uploads).toHaveLength(2);
    expect(uploads[1]!.headers.ce_id).not.toBe(uploads[0]!.headers.ce_id);
    // Finished now: the next pass has nothing to do for it, however long it waits.
    await new Promise((r) => setTimeout(r, 400));
    expect((await docs.reconcile()).redriven).toBe(0);
  });

  it("npm run dlq:replay republishes a dead-lettered upload to document.events and the document is PROCESSED; a second run replays nothing", async () => {
    const id = await upload("Dead-lettered by a worker bug");
    refused.add(id);
    await expect.poll(() => on(DLQ, id).length, { timeout: 30_000, interval: 50 }).toBe(1);
    expect(on(DLQ, id)[0]!.headers[DlqHeaders.reason]).toBe("invalid");
    expect(await statusOf(id)).toBe(ProcessingStatus.PROCESSING);
    refused.delete(id); // the bug is fixed

    const lines: string[] = [];
    const log = console.log;
    const replayGroup = `replay-${randomBytes(3).toString("hex")}`;
    const run = async (...args: string[]) => {
      lines.length = 0;
      console.log = (line: string) => void lines.push(line);
      try {
        return await dlqReplay(["--topic", DLQ, "--group", replayGroup, "--brokers", broker.address, ...args], {});
      } finally {
        console.log = log;
      }
    };
    // A dry run lists it and changes nothing.
    expect(await run("--dry-run")).toBe(0);
    expect(lines.map((l) => JSON.parse(l))).toContainEqual(
      expect.objectContaining({ key: id, outcome: "would replay", topic: TOPIC, reason: "invalid" }),
    );
    expect(await statusOf(id)).toBe(ProcessingStatus.PROCESSING);

    expect(await run()).toBe(0);
    expect(lines.map((l) => JSON.parse(l))).toContainEqual(expect.objectContaining({ key: id, outcome: "replayed" }));
    await processed(id);
    const copies = on(TOPIC, id).filter((e) => e.headers.ce_type === UPLOADED_TYPE);
    expect(copies).toHaveLength(2);
    const [original, replayed] = copies;
    // The original message, without the dead-letter headers.
    expect(replayed!.message.value!.equals(original!.message.value!)).toBe(true);
    expect(replayed!.headers.ce_id).toBe(original!.headers.ce_id);
    expect(Object.keys(replayed!.headers).filter((k) => k.startsWith("dlq_"))).toEqual([]);
    expect(Object.keys(replayed!.headers).sort()).toEqual(Object.keys(original!.headers).sort());

    // The replay group remembers where it stopped.
    expect(await run()).toBe(0);
    expect(JSON.parse(lines.at(-1)!)).toMatchObject({ replayed: 0, skipped: 0, left: 0 });
  });
});
