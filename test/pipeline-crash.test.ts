import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fromBinary } from "@bufbuild/protobuf";
import type { Kafka } from "kafkajs";
import { startBroker, type RunningBroker } from "../deploy/embedded/kafka/index.js";
import { startEmbeddedPostgres } from "../deploy/embedded/postgres.js";
import {
  DocumentService,
  DocumentType,
  FailureReason,
  ProcessingStatus,
  type UploadRequest,
} from "../gen/medmesh/documents/v1/documents_pb.js";
import { DocumentFailedSchema, DocumentProcessedSchema } from "../gen/medmesh/events/v1/document_events_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { createKafka } from "../platform/events/index.js";
import { startDocuments } from "../services/documents/main.js";
import { encryptedPdf, imageOnlyPdf, onePagePdf, truncatedPdf } from "./fixtures/documents/make-fixtures.js";
import { testEnv } from "./support/backends.js";
import { freePort, repoRoot } from "./support/embedded-mesh.js";
import { startTestIdentity, type TestIdentity } from "./support/identity.js";

/**
 * SIGKILL the processing worker in the middle of a batch, start it again, and every document
 * must reach exactly one terminal state, with one outcome and one processed/failed event each.
 * The worker is a real separate process (as in production); documents, identity, the broker and
 * Postgres stay up, as they would while one worker pod dies.
 */

type Docs = ReturnType<typeof createMeshClient<typeof DocumentService>>;

const GOOD = 24;
const expected: Array<{ bytes: Buffer; title: string; status: ProcessingStatus; reason?: FailureReason }> = [
  ...Array.from({ length: GOOD }, (_, i) => ({
    bytes: onePagePdf(i),
    title: `Crash batch ${i}`,
    status: ProcessingStatus.PROCESSED,
  })),
  ...[0, 1, 2].map((i) => ({
    bytes: encryptedPdf(),
    title: `Locked ${i}`,
    status: ProcessingStatus.FAILED,
    reason: FailureReason.ENCRYPTED,
  })),
  ...[0, 1, 2].map((i) => ({
    bytes: imageOnlyPdf(),
    title: `Scanned ${i}`,
    status: ProcessingStatus.FAILED,
    reason: FailureReason.IMAGE_ONLY,
  })),
  ...[0, 1].map((i) => ({
    bytes: truncatedPdf(),
    title: `Broken ${i}`,
    status: ProcessingStatus.FAILED,
    reason: FailureReason.CORRUPT,
  })),
];

async function* uploadOf(title: string, bytes: Buffer): AsyncIterable<UploadRequest> {
  yield {
    part: { case: "header", value: { document: { title, documentType: DocumentType.CASE_REPORT }, filename: "f.pdf" } },
  } as UploadRequest;
  yield { part: { case: "chunk", value: bytes } } as unknown as UploadRequest;
}

async function terminalCount(docs: Docs, ids: string[]): Promise<number> {
  const states = await Promise.all(ids.map((id) => docs.getDocument({ id })));
  return states.filter((s) =>
    [ProcessingStatus.PROCESSED, ProcessingStatus.FAILED].includes(s.document!.processingStatus),
  ).length;
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs: number, everyMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** All events on a topic from the beginning, read by a throwaway consumer group. */
async function readAll(
  kafka: Kafka,
  topic: string,
  atLeast: number,
): Promise<Array<{ key: string; headers: Record<string, string>; value: Buffer }>> {
  const out: Array<{ key: string; headers: Record<string, string>; value: Buffer }> = [];
  const consumer = kafka.consumer({ groupId: `crash-reader-${randomBytes(3).toString("hex")}` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ message }) => {
      const headers = Object.fromEntries(Object.entries(message.headers ?? {}).map(([k, v]) => [k, String(v)]));
      out.push({ key: message.key!.toString(), headers, value: message.value! });
    },
  });
  try {
    await until(`${atLeast} events on ${topic}`, async () => out.length >= atLeast, 30_000, 100);
    // A moment more, so duplicates that would follow are read too.
    await new Promise((r) => setTimeout(r, 1500));
  } finally {
    await consumer.disconnect();
  }
  return out;
}

describe("the processing worker killed mid-batch", () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-crash-test-"));
  const documentsSchema = `documents_crash_${randomBytes(3).toString("hex")}`;
  const processingSchema = `processing_crash_${randomBytes(3).toString("hex")}`;
  let databaseUrl: string;
  let stopPostgres: (() => Promise<void>) | undefined;
  let broker: RunningBroker;
  let kafka: Kafka;
  let identity: TestIdentity;
  let stopDocuments: () => Promise<void>;
  let documentsTarget: string;
  let docs: Docs;
  let workerEnv: NodeJS.ProcessEnv;
  let worker: ChildProcess | undefined;

  function startWorker(): Promise<ChildProcess> {
    const child = spawn(process.execPath, ["--import", "tsx", "services/processing/main.ts"], {
      cwd: repoRoot,
      env: workerEnv,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr!.on("data", (d) => (err += d.toString()));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`worker did not start: ${err.slice(-2000)}`)), 60_000);
      child.stdout!.on("data", (d: Buffer) => {
        if (d.toString().includes("processing grpc://")) {
          clearTimeout(timer);
          resolve(child);
        }
      });
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`worker exited during start (${signal ?? code}): ${err.slice(-2000)}`));
      });
    });
  }

  beforeAll(async () => {
    if (process.env.DATABASE_URL) databaseUrl = process.env.DATABASE_URL;
    else {
      // The embedded default's Postgres, as `npm start` runs it: a server the worker reaches over TCP.
      const pgServer = await startEmbeddedPostgres({
        MEDMESH_DATA_DIR: dataDir,
        EMBEDDED_PG_PORT: String(await freePort()),
      });
      databaseUrl = pgServer.url;
      stopPostgres = pgServer.stop;
    }
    broker = await startBroker({ port: 0, dataDir: path.join(dataDir, "kafka"), logLevel: "error" });
    kafka = createKafka({ brokers: [broker.address], clientId: "crash-test" });
    identity = await startTestIdentity();
    const svc = await startDocuments({
      ...testEnv,
      DATABASE_URL: databaseUrl,
      DOCUMENTS_DB_SCHEMA: documentsSchema,
      IDENTITY_TARGET: identity.target,
      KAFKA_BROKERS: broker.address,
      BLOB_DIR: path.join(dataDir, "blobs"),
    });
    stopDocuments = svc.stop;
    documentsTarget = `127.0.0.1:${svc.port}`;
    docs = createMeshClient(DocumentService, documentsTarget, {
      headers: await identity.bearer("doctor"),
      defaultTimeoutMs: 30_000,
    });
    workerEnv = {
      ...process.env,
      DATABASE_URL: databaseUrl,
      PROCESSING_DB_SCHEMA: processingSchema,
      PROCESSING_PORT: "0",
      KAFKA_BROKERS: broker.address,
      DOCUMENTS_TARGET: documentsTarget,
      IDENTITY_TARGET: identity.target,
      PROCESSING_API_KEY: await identity.serviceApiKey("processing"),
      PROCESSING_CONCURRENCY: "3",
      PROCESSING_RETRY_BASE_MS: "100",
      // The killed worker's partitions wait for its session to expire before the new one gets them.
      PROCESSING_SESSION_TIMEOUT_MS: "3000",
      LOG_LEVEL: "error",
      SHUTDOWN_GRACE_MS: "2000",
    };
  }, 120_000);

  afterAll(async () => {
    worker?.kill("SIGKILL");
    docs?.close();
    await stopDocuments?.();
    await identity?.stop();
    await broker?.stop();
    if (process.env.DATABASE_URL) {
      const client = new pg.Client({ connectionString: databaseUrl });
      await client.connect();
      await client.query(
        `drop schema if exists ${documentsSchema} cascade; drop schema if exists ${processingSchema} cascade`,
      );
      await client.end();
    }
    await stopPostgres?.();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("every document reaches exactly one terminal state, with no duplicated outcome or event", async () => {
    // The whole batch is waiting before the worker starts, so the kill lands in the middle of it.
    const ids: string[] = [];
    for (const e of expected) ids.push((await docs.upload(uploadOf(e.title, e.bytes))).document!.id);

    worker = await startWorker();
    await until("a few documents to be done", async () => (await terminalCount(docs, ids)) >= 4, 60_000, 20);
    worker.kill("SIGKILL");
    await new Promise((r) => worker!.once("exit", r));
    const doneAtKill = await terminalCount(docs, ids);
    // Otherwise the kill did not interrupt anything and the test would prove nothing.
    expect(doneAtKill).toBeLessThan(ids.length);

    worker = await startWorker();
    await until("every document to be done", async () => (await terminalCount(docs, ids)) === ids.length, 120_000, 200);

    // The status each document should have, with the reason for the failures.
    for (const [i, id] of ids.entries()) {
      const doc = (await docs.getDocument({ id })).document!;
      expect([doc.title, doc.processingStatus]).toEqual([expected[i]!.title, expected[i]!.status]);
      const { outcome } = await docs.getProcessingResult({ documentId: id });
      if (expected[i]!.reason)
        expect(outcome!.outcome).toMatchObject({ case: "failure", value: { reason: expected[i]!.reason } });
      else expect(outcome!.outcome.case).toBe("result");
    }

    // Exactly one terminal transition and one outcome per document, in the documents schema itself.
    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    try {
      const terminal = await client.query(
        `select document_id::text as id, count(*)::int as n from ${documentsSchema}.document_status where status in ('processed','failed') group by 1`,
      );
      expect(terminal.rows).toHaveLength(ids.length);
      expect(terminal.rows.every((r: { n: number }) => r.n === 1)).toBe(true);
      const outcomes = await client.query(`select count(*)::int as n from ${documentsSchema}.processing_outcome`);
      expect(outcomes.rows[0].n).toBe(ids.length);
    } finally {
      await client.end();
    }

    // One processed-or-failed event per document. The relay may publish an event twice if it
    // dies between the broker's ack and marking the row sent; such a copy has the same ce_id,
    // which consumers deduplicate, so distinct ids are what must be exactly one.
    const uploads = ids.length;
    const events = await readAll(kafka, "document.events", uploads * 2);
    const outcomeEvents = events.filter(
      (e) =>
        e.headers.ce_type === "medmesh.document.processed.v1" || e.headers.ce_type === "medmesh.document.failed.v1",
    );
    const idsByDoc = new Map<string, Set<string>>();
    for (const e of outcomeEvents) {
      const payload =
        e.headers.ce_type === "medmesh.document.processed.v1"
          ? fromBinary(DocumentProcessedSchema, e.value)
          : fromBinary(DocumentFailedSchema, e.value);
      expect(payload.documentId).toBe(e.key);
      idsByDoc.set(e.key, (idsByDoc.get(e.key) ?? new Set()).add(e.headers.ce_id!));
    }
    expect([...idsByDoc.keys()].sort()).toEqual([...ids].sort());
    expect([...idsByDoc.values()].every((s) => s.size === 1)).toBe(true);
    expect(events.filter((e) => e.headers.ce_type === "medmesh.document.uploaded.v1")).toHaveLength(uploads);
  }, 300_000);
});
