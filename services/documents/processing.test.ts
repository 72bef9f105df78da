import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import {
  CitationType,
  DocumentProcessingService,
  DocumentService,
  DocumentType,
  EntityType,
  FailureReason,
  ProcessingStatus,
  Visibility,
  type UploadRequest,
  type WatchDocumentResponse,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { startGateway } from "../../gateway/main.js";
import { backends, testEnv } from "../../test/support/backends.js";
import { startTestIdentity, type TestIdentity } from "../../test/support/identity.js";
import { rejection } from "../../test/support/rejection.js";
import { startDocuments } from "./main.js";
import { tinyPdf as pdf, uploadOf } from "../../test/support/documents.js";

type Docs = ReturnType<typeof createMeshClient<typeof DocumentService>>;
type Worker = ReturnType<typeof createMeshClient<typeof DocumentProcessingService>>;

async function* versionOf(documentId: string, bytes: Buffer): AsyncIterable<UploadRequest> {
  yield { part: { case: "header", value: { documentId, filename: "p2.pdf" } } } as never;
  yield { part: { case: "chunk", value: bytes } } as never;
}

const result = (extra: Record<string, unknown> = {}) => ({
  case: "result" as const,
  value: {
    mimeType: "application/pdf",
    pages: 2,
    wordCount: 420,
    textLength: 2600,
    language: "en",
    abstract: "We studied hypertension.",
    keywords: ["hypertension"],
    entities: [
      {
        text: "hypertension",
        canonical: "hypertension",
        type: EntityType.DISEASE,
        start: 11,
        end: 23,
        confidence: 0.95,
        matchedBy: "canonical",
      },
    ],
    entitySummary: [{ canonical: "hypertension", type: EntityType.DISEASE, count: 1, confidence: 0.95 }],
    citations: [{ type: CitationType.DOI, id: "10.1000/xyz123", start: 100, end: 114 }],
    specialty: "cardiology",
    quality: { score: 0.61, components: { length: 0.2, abstract: 1 } },
    text: "We studied hypertension in adults.",
    ...extra,
  } as never,
});

/** Reads a watch to its end (or until `max` messages), with a deadline so a hang fails the test. */
async function collect(stream: AsyncIterable<WatchDocumentResponse>, max = 20): Promise<WatchDocumentResponse[]> {
  const out: WatchDocumentResponse[] = [];
  for await (const m of stream) {
    out.push(m);
    if (out.length >= max) break;
  }
  return out;
}

describe.each(backends())("processing status and results on $name", (backend) => {
  let identity: TestIdentity;
  let stops: Array<() => Promise<void>> = [];
  let address: string;
  let gatewayUrl: string;
  let doctor: Docs;
  let doctor2: Docs;
  let admin: Docs;
  let worker: Worker;
  let doctorAsWorker: Worker;
  const closers: Array<{ close(): void }> = [];

  beforeAll(async () => {
    identity = await startTestIdentity();
    const svc = await startDocuments({
      ...testEnv,
      ...backend.env,
      IDENTITY_TARGET: identity.target,
      WATCH_POLL_MS: "100",
    });
    stops.push(svc.stop);
    address = `127.0.0.1:${svc.port}`;
    const gw = await startGateway(
      { ...testEnv, IDENTITY_TARGET: identity.target, DOCUMENTS_TARGET: address },
      { services: [DocumentService] },
    );
    stops.unshift(gw.stop);
    gatewayUrl = `http://127.0.0.1:${gw.port}`;
    const docs = async (who: "doctor" | "doctor2" | "admin") =>
      createMeshClient(DocumentService, address, { headers: await identity.bearer(who), defaultTimeoutMs: 20_000 });
    doctor = await docs("doctor");
    doctor2 = await docs("doctor2");
    admin = await docs("admin");
    worker = createMeshClient(DocumentProcessingService, address, {
      headers: await identity.serviceBearer("processing"),
      defaultTimeoutMs: 20_000,
    });
    doctorAsWorker = createMeshClient(DocumentProcessingService, address, {
      headers: await identity.bearer("doctor"),
      defaultTimeoutMs: 20_000,
    });
    closers.push(doctor, doctor2, admin, worker, doctorAsWorker);
  });
  afterAll(async () => {
    for (const c of closers) c.close();
    for (const stop of stops) await stop();
    await identity?.stop();
  });

  it("a document moves PENDING -> UPLOADED -> PROCESSING -> PROCESSED, and a watcher sees every step and then the end", async () => {
    const created = await doctor.createDocument({
      document: { title: "Watched from the start", documentType: DocumentType.REVIEW },
    });
    const id = created.document!.id;
    expect(created.document!.processingStatus).toBe(ProcessingStatus.PENDING);
    const watched = collect(doctor.watchDocument({ id }, { timeoutMs: 20_000 }));
    await new Promise((r) => setTimeout(r, 200));
    await doctor.upload(versionOf(id, pdf("v1")));
    const started = await worker.startProcessing({ documentId: id, version: 1 });
    expect(started.proceed).toBe(true);
    expect((await doctor.getDocument({ id })).document!.processingStatus).toBe(ProcessingStatus.PROCESSING);
    const recorded = await worker.recordProcessingResult({ documentId: id, version: 1, outcome: result() });
    expect(recorded.alreadyRecorded).toBe(false);
    expect(recorded.outcome!.outcome.case).toBe("result");

    const seen = await watched;
    expect(seen.map((m) => [m.status, m.version])).toEqual([
      [ProcessingStatus.PENDING, 0],
      [ProcessingStatus.UPLOADED, 1],
      [ProcessingStatus.PROCESSING, 1],
      [ProcessingStatus.PROCESSED, 1],
    ]);
    expect(seen.every((m) => m.documentId === id && m.changeTime)).toBe(true);
    const doc = (await doctor.getDocument({ id })).document!;
    expect(doc.processingStatus).toBe(ProcessingStatus.PROCESSED);

    // A watch of a document already done says where it stands and ends at once.
    const again = await collect(doctor.watchDocument({ id }, { timeoutMs: 5_000 }));
    expect(again.map((m) => m.status)).toEqual([ProcessingStatus.PROCESSED]);

    const got = await doctor.getProcessingResult({ documentId: id });
    expect(got.outcome!.version).toBe(1);
    expect(got.outcome!.outcome.case).toBe("result");
    const r = got.outcome!.outcome.value as {
      specialty: string;
      entities: unknown[];
      citations: Array<{ id: string }>;
      quality: { score: number };
    };
    expect(r.specialty).toBe("cardiology");
    expect(r.entities).toHaveLength(1);
    expect(r.citations[0]!.id).toBe("10.1000/xyz123");
    expect(r.quality.score).toBeCloseTo(0.61, 5);
    // A reader that keeps only the start of the text gets only that.
    const full = (got.outcome!.outcome.value as { text: string }).text;
    expect(full.length).toBeGreaterThan(5);
    const cut = await doctor.getProcessingResult({ documentId: id, maxTextChars: 5 });
    expect((cut.outcome!.outcome.value as { text: string }).text).toBe(full.slice(0, 5));
  });

  it("an upload that creates a document writes it whole, and StartProcessing hands over a small version's bytes only when asked", async () => {
    const bytes = pdf("inline");
    const up = await doctor.upload(uploadOf("Handed over", bytes));
    const id = up.document!.id;
    // Created in one statement: already uploaded, at version 1, with the version's size and type.
    expect(up.document!.processingStatus).toBe(ProcessingStatus.UPLOADED);
    expect(up.document!.version).toBe(1);
    expect(up.document!.sizeBytes).toBe(BigInt(bytes.length));
    const got = (await doctor.getDocument({ id })).document!;
    expect([got.processingStatus, got.version, got.mimeType]).toEqual([
      ProcessingStatus.UPLOADED,
      1,
      "application/pdf",
    ]);
    const versions = (await doctor.listVersions({ documentId: id })).versions;
    expect(versions.map((v) => [v.version, v.sha256, v.createTime?.seconds])).toEqual([
      [1, up.version!.sha256, up.version!.createTime!.seconds],
    ]);

    // Too small a limit: nothing inline (the worker reads it with ReadContent).
    const tooSmall = await worker.startProcessing({
      documentId: id,
      version: 1,
      inlineContentMaxBytes: bytes.length - 1,
    });
    expect(tooSmall.proceed).toBe(true);
    expect(tooSmall.content).toBeUndefined();
    const unasked = await worker.startProcessing({ documentId: id, version: 1 });
    expect(unasked.proceed).toBe(true);
    expect(unasked.content).toBeUndefined();
    const fits = await worker.startProcessing({ documentId: id, version: 1, inlineContentMaxBytes: bytes.length });
    expect(fits.proceed).toBe(true);
    expect(Buffer.from(fits.content!).equals(bytes)).toBe(true);
    // A version with an outcome hands over the outcome, never the bytes.
    await worker.recordProcessingResult({ documentId: id, version: 1, outcome: result() });
    const done = await worker.startProcessing({ documentId: id, version: 1, inlineContentMaxBytes: 1024 * 1024 });
    expect(done.proceed).toBe(false);
    expect(done.content).toBeUndefined();
    // Beyond what the contract allows in one answer: refused, not silently shortened.
    const over = await rejection(
      worker.startProcessing({ documentId: id, version: 1, inlineContentMaxBytes: 1024 * 1024 + 1 }),
    );
    expect(over.code).toBe(Code.InvalidArgument);
  });

  it("the first outcome stands: recording again changes nothing, and a redelivered event is told what was recorded", async () => {
    const up = await doctor.upload(uploadOf("Recorded twice", pdf("twice")));
    const id = up.document!.id;
    await worker.startProcessing({ documentId: id, version: 1 });
    await worker.recordProcessingResult({ documentId: id, version: 1, outcome: result({ specialty: "cardiology" }) });
    const second = await worker.recordProcessingResult({
      documentId: id,
      version: 1,
      outcome: { case: "failure", value: { reason: FailureReason.CORRUPT, message: "no" } as never },
    });
    expect(second.alreadyRecorded).toBe(true);
    expect(second.outcome!.outcome.case).toBe("result");
    const restart = await worker.startProcessing({ documentId: id, version: 1 });
    expect(restart.proceed).toBe(false);
    expect(restart.outcome!.outcome.case).toBe("result");
    // Still one PROCESSED in the history: a new watcher sees exactly that and the watch ends.
    const seen = await collect(doctor.watchDocument({ id }, { timeoutMs: 5_000 }));
    expect(seen.map((m) => m.status)).toEqual([ProcessingStatus.PROCESSED]);
    expect((await doctor.getDocument({ id })).document!.processingStatus).toBe(ProcessingStatus.PROCESSED);
  });

  it("RecordIndexed moves the current PROCESSED version to INDEXED once; a repeat, an older version or a gone document change nothing", async () => {
    const up = await doctor.upload(uploadOf("Indexed once", pdf("indexed")));
    const id = up.document!.id;
    // Not processed yet: nothing to move.
    expect((await worker.recordIndexed({ documentId: id, version: 1 })).changed).toBe(false);
    await worker.startProcessing({ documentId: id, version: 1 });
    await worker.recordProcessingResult({ documentId: id, version: 1, outcome: result() });
    expect((await worker.recordIndexed({ documentId: id, version: 2 })).changed).toBe(false);
    expect((await worker.recordIndexed({ documentId: id, version: 1 })).changed).toBe(true);
    expect((await worker.recordIndexed({ documentId: id, version: 1 })).changed).toBe(false);
    expect((await doctor.getDocument({ id })).document!.processingStatus).toBe(ProcessingStatus.INDEXED);
    // One INDEXED in the history, after PROCESSED: a watcher of the finished document sees where it stands.
    const seen = await collect(doctor.watchDocument({ id }, { timeoutMs: 5_000 }));
    expect(seen.map((m) => [m.status, m.version])).toEqual([[ProcessingStatus.INDEXED, 1]]);
    await doctor.deleteDocument({ id });
    expect((await rejection(worker.recordIndexed({ documentId: id, version: 1 }))).code).toBe(Code.NotFound);
    const unknown = "00000000-0000-4000-8000-000000000000";
    expect((await rejection(worker.recordIndexed({ documentId: unknown, version: 1 }))).code).toBe(Code.NotFound);
  });

  it("a failure is recorded with its reason and sentence, streamed to watchers and served by GetProcessingResult", async () => {
    const up = await doctor.upload(uploadOf("Locked paper", pdf("locked")));
    const id = up.document!.id;
    const watched = collect(doctor.watchDocument({ id }, { timeoutMs: 20_000 }));
    await new Promise((r) => setTimeout(r, 200));
    await worker.startProcessing({ documentId: id, version: 1 });
    await worker.recordProcessingResult({
      documentId: id,
      version: 1,
      outcome: {
        case: "failure",
        value: {
          reason: FailureReason.ENCRYPTED,
          message: "The PDF is password-protected; upload it without a password.",
        } as never,
      },
    });
    const seen = await watched;
    expect(seen.map((m) => m.status)).toEqual([
      ProcessingStatus.UPLOADED,
      ProcessingStatus.PROCESSING,
      ProcessingStatus.FAILED,
    ]);
    expect(seen.at(-1)!.failure).toMatchObject({
      reason: FailureReason.ENCRYPTED,
      message: expect.stringContaining("password"),
    });
    const got = await doctor.getProcessingResult({ documentId: id, version: 1 });
    expect(got.outcome!.outcome).toMatchObject({ case: "failure", value: { reason: FailureReason.ENCRYPTED } });
    expect((await doctor.getDocument({ id })).document!.processingStatus).toBe(ProcessingStatus.FAILED);
  });

  it("an outcome for a version that has been superseded is kept but leaves the document's status to the newer content", async () => {
    const up = await doctor.upload(uploadOf("Two versions", pdf("one")));
    const id = up.document!.id;
    await worker.startProcessing({ documentId: id, version: 1 });
    await doctor.upload(versionOf(id, pdf("two")));
    await worker.recordProcessingResult({ documentId: id, version: 1, outcome: result() });
    const doc = (await doctor.getDocument({ id })).document!;
    expect([doc.version, doc.processingStatus]).toEqual([2, ProcessingStatus.UPLOADED]);
    expect((await doctor.getProcessingResult({ documentId: id, version: 1 })).outcome!.version).toBe(1);
    const pending = await rejection(doctor.getProcessingResult({ documentId: id }));
    expect(pending.code).toBe(Code.FailedPrecondition);
    expect(pending.rawMessage).toMatch(/version 2 .* has not been processed yet \(its status is uploaded\)/);
    // Starting the old version again moves nothing; starting the current one does.
    expect((await worker.startProcessing({ documentId: id, version: 1 })).proceed).toBe(false);
    expect((await worker.startProcessing({ documentId: id, version: 2 })).proceed).toBe(true);
    expect((await doctor.getDocument({ id })).document!.processingStatus).toBe(ProcessingStatus.PROCESSING);
  });

  it("browsers watch through the gateway with Connect server streaming", async () => {
    const up = await doctor.upload(uploadOf("Watched from a browser", pdf("browser")));
    const id = up.document!.id;
    const browser = createClient(
      DocumentService,
      createConnectTransport({ baseUrl: gatewayUrl, httpVersion: "1.1", useBinaryFormat: false }),
    );
    const headers = await identity.bearer("doctor");
    const watched = collect(browser.watchDocument({ id }, { headers, timeoutMs: 20_000 }));
    await new Promise((r) => setTimeout(r, 300));
    await worker.startProcessing({ documentId: id, version: 1 });
    await worker.recordProcessingResult({ documentId: id, version: 1, outcome: result() });
    expect((await watched).map((m) => m.status)).toEqual([
      ProcessingStatus.UPLOADED,
      ProcessingStatus.PROCESSING,
      ProcessingStatus.PROCESSED,
    ]);
    const viaGateway = await browser.getProcessingResult({ documentId: id }, { headers });
    expect(viaGateway.outcome!.outcome.case).toBe("result");
  });

  it("the worker's RPCs are for service principals only and are not exposed by the gateway", async () => {
    const up = await doctor.upload(uploadOf("Not yours to process", pdf("guard")));
    const id = up.document!.id;
    expect((await rejection(doctorAsWorker.startProcessing({ documentId: id, version: 1 }))).code).toBe(
      Code.PermissionDenied,
    );
    expect(
      (await rejection(doctorAsWorker.recordProcessingResult({ documentId: id, version: 1, outcome: result() }))).code,
    ).toBe(Code.PermissionDenied);
    const anonymous = createMeshClient(DocumentProcessingService, address, { defaultTimeoutMs: 5_000 });
    closers.push(anonymous);
    expect((await rejection(anonymous.startProcessing({ documentId: id, version: 1 }))).code).toBe(
      Code.Unauthenticated,
    );
    const viaGateway = createClient(
      DocumentProcessingService,
      createConnectTransport({ baseUrl: gatewayUrl, httpVersion: "1.1" }),
    );
    const refused = await rejection(
      viaGateway.startProcessing(
        { documentId: id, version: 1 },
        { headers: await identity.serviceBearer("processing") },
      ),
    );
    // The gateway has no route for a mesh-internal service at all.
    expect([refused.code, refused.rawMessage]).toEqual([
      Code.NotFound,
      expect.stringContaining("no route for POST /medmesh.documents.v1.DocumentProcessingService/StartProcessing"),
    ]);
    expect((await doctor.getDocument({ id })).document!.processingStatus).toBe(ProcessingStatus.UPLOADED);
  });

  it("bad input to the worker's RPCs gets a clear status", async () => {
    const up = await doctor.upload(uploadOf("Bad reports", pdf("bad")));
    const id = up.document!.id;
    const missing = "00000000-0000-4000-8000-000000000000";
    // Unknown document, and a version it does not have yet.
    expect((await rejection(worker.startProcessing({ documentId: missing, version: 1 }))).code).toBe(Code.NotFound);
    const ahead = await rejection(worker.recordProcessingResult({ documentId: id, version: 7, outcome: result() }));
    expect([ahead.code, ahead.rawMessage]).toEqual([
      Code.NotFound,
      `document ${id} has no version 7 (its current version is 1)`,
    ]);
    // Not a UUID, version 0, no outcome at all, a failure without a reason, too many entities.
    expect((await rejection(worker.startProcessing({ documentId: "nope", version: 1 }))).code).toBe(
      Code.InvalidArgument,
    );
    expect((await rejection(worker.startProcessing({ documentId: id, version: 0 }))).code).toBe(Code.InvalidArgument);
    expect((await rejection(worker.recordProcessingResult({ documentId: id, version: 1 }))).code).toBe(
      Code.InvalidArgument,
    );
    const noReason = await rejection(
      worker.recordProcessingResult({
        documentId: id,
        version: 1,
        outcome: { case: "failure", value: { message: "?" } as never },
      }),
    );
    expect(noReason.code).toBe(Code.InvalidArgument);
    const entity = { text: "x", canonical: "x", type: EntityType.DRUG, start: 0, end: 1, confidence: 0.5 };
    const tooMany = await rejection(
      worker.recordProcessingResult({
        documentId: id,
        version: 1,
        outcome: result({ entities: Array.from({ length: 1001 }, () => entity) }),
      }),
    );
    expect(tooMany.code).toBe(Code.InvalidArgument);
    // None of it left a trace.
    expect((await doctor.getDocument({ id })).document!.processingStatus).toBe(ProcessingStatus.UPLOADED);
    expect((await rejection(doctor.getProcessingResult({ documentId: id }))).code).toBe(Code.FailedPrecondition);
    // GetProcessingResult on a document without content, and on a version it lacks.
    const bare = await doctor.createDocument({ document: { title: "No content", documentType: DocumentType.OTHER } });
    expect((await rejection(doctor.getProcessingResult({ documentId: bare.document!.id }))).code).toBe(
      Code.FailedPrecondition,
    );
    expect((await rejection(doctor.getProcessingResult({ documentId: id, version: 3 }))).code).toBe(Code.NotFound);
  });

  it("watching follows ownership, ends with not_found when the document is deleted, and stops when the caller cancels", async () => {
    const up = await doctor.upload(uploadOf("Private and watched", pdf("private"), { visibility: Visibility.PRIVATE }));
    const id = up.document!.id;
    // Someone else's private document does not exist for them; an admin may watch it.
    expect((await rejection(collect(doctor2.watchDocument({ id }, { timeoutMs: 5_000 })))).code).toBe(Code.NotFound);
    expect((await rejection(doctor2.getProcessingResult({ documentId: id }))).code).toBe(Code.NotFound);
    const adminSees = await collect(admin.watchDocument({ id }, { timeoutMs: 5_000 }), 1);
    expect(adminSees[0]!.status).toBe(ProcessingStatus.UPLOADED);

    // The caller hangs up: the stream ends on the client without waiting for a terminal state.
    const controller = new AbortController();
    const cancelled = collect(doctor.watchDocument({ id }, { signal: controller.signal, timeoutMs: 20_000 }));
    setTimeout(() => controller.abort(), 300);
    expect((await rejection(cancelled)).code).toBe(Code.Canceled);

    // Awaited only after the delete, by which time the stream may already have ended: catch it now.
    const watched = rejection(collect(doctor.watchDocument({ id }, { timeoutMs: 20_000 })));
    await new Promise((r) => setTimeout(r, 200));
    await doctor.deleteDocument({ id });
    const gone = await watched;
    expect([gone.code, gone.rawMessage]).toEqual([Code.NotFound, `document ${id} was deleted`]);
    expect((await rejection(collect(doctor.watchDocument({ id: "not-a-uuid" })))).code).toBe(Code.InvalidArgument);
  });

  it.runIf(backend.name === "postgres")("a watcher on one replica sees changes made through another", async () => {
    const other = await startDocuments({
      ...testEnv,
      ...backend.env,
      IDENTITY_TARGET: identity.target,
      WATCH_POLL_MS: "100",
    });
    stops.push(other.stop);
    const workerOnOther = createMeshClient(DocumentProcessingService, `127.0.0.1:${other.port}`, {
      headers: await identity.serviceBearer("processing"),
      defaultTimeoutMs: 20_000,
    });
    closers.push(workerOnOther);
    const up = await doctor.upload(uploadOf("Two replicas", pdf("replicas")));
    const id = up.document!.id;
    const watched = collect(doctor.watchDocument({ id }, { timeoutMs: 20_000 }));
    await new Promise((r) => setTimeout(r, 200));
    await workerOnOther.startProcessing({ documentId: id, version: 1 });
    await workerOnOther.recordProcessingResult({ documentId: id, version: 1, outcome: result() });
    expect((await watched).map((m) => m.status)).toEqual([
      ProcessingStatus.UPLOADED,
      ProcessingStatus.PROCESSING,
      ProcessingStatus.PROCESSED,
    ]);
  });
});
