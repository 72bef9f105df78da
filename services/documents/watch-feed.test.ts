import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code } from "@connectrpc/connect";
import {
  DocumentProcessingService,
  DocumentService,
  ProcessingStatus,
  Visibility,
  type WatchDocumentResponse,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { backends, testEnv } from "../../test/support/backends.js";
import { startTestIdentity, type Persona, type TestIdentity } from "../../test/support/identity.js";
import { rejection } from "../../test/support/rejection.js";
import { startDocuments } from "./main.js";
import { tinyPdf, uploadOf } from "../../test/support/documents.js";
import type { FeedStats } from "./status-feed.js";

type Docs = ReturnType<typeof createMeshClient<typeof DocumentService>>;
type Worker = ReturnType<typeof createMeshClient<typeof DocumentProcessingService>>;

const WATCHERS = 50;

const upload = (title: string, visibility = Visibility.PLATFORM) => uploadOf(title, tinyPdf(title), { visibility });

const processed = {
  case: "result" as const,
  value: { mimeType: "application/pdf", pages: 1, wordCount: 10, textLength: 60, language: "en" } as never,
};

/** A watch read to its end: the statuses it delivered, and how it ended. */
function watch(client: Docs, id: string) {
  const seen: ProcessingStatus[] = [];
  let firstSeen!: () => void;
  const first = new Promise<void>((r) => (firstSeen = r));
  const end = (async () => {
    try {
      for await (const m of client.watchDocument(
        { id },
        { timeoutMs: 60_000 },
      ) as AsyncIterable<WatchDocumentResponse>) {
        seen.push(m.status);
        firstSeen();
      }
    } finally {
      firstSeen();
    }
  })();
  end.catch(() => undefined);
  return { seen, first, end };
}

/** Waits until `done` holds, checking every few milliseconds, for at most `tries` checks. */
async function until(done: () => boolean, tries = 600): Promise<void> {
  for (let i = 0; !done(); i++) {
    if (i >= tries) throw new Error("gave up waiting");
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe.each(backends())("one status feed per replica on $name", (backend) => {
  let identity: TestIdentity;
  const stops: Array<() => Promise<void>> = [];
  const closers: Array<{ close(): void }> = [];
  let address: string;
  let feed: () => FeedStats;
  let queries = 0;
  let worker: Worker;
  const as = async (who: Persona, target = address) => {
    const c = createMeshClient(DocumentService, target, {
      headers: await identity.bearer(who),
      defaultTimeoutMs: 20_000,
    });
    closers.push(c);
    return c;
  };
  const env = () => ({
    ...testEnv,
    ...backend.env,
    IDENTITY_TARGET: identity.target,
    WATCH_POLL_MS: "100",
    WATCH_MAX_PER_USER: String(WATCHERS),
  });

  beforeAll(async () => {
    identity = await startTestIdentity();
    stops.push(() => identity.stop());
    const svc = await startDocuments(env(), { uploadSweepIntervalMs: 0, onQuery: () => queries++ });
    stops.unshift(svc.stop);
    address = `127.0.0.1:${svc.port}`;
    feed = svc.watchFeed;
    worker = createMeshClient(DocumentProcessingService, address, {
      headers: await identity.serviceBearer("processing"),
      defaultTimeoutMs: 20_000,
    });
    closers.push(worker);
  });
  afterAll(async () => {
    for (const c of closers) c.close();
    for (const stop of stops) await stop();
  });

  it(`${WATCHERS} watchers share one query per poll, and each of them gets each change`, async () => {
    const doctor = await as("doctor");
    const a = (await doctor.upload(upload("Watched by many"))).document!.id;
    const b = (await doctor.upload(upload("Watched by a few"))).document!.id;
    const watchers = Array.from({ length: WATCHERS }, (_, i) => watch(doctor, i % 5 === 0 ? b : a));
    await Promise.all(watchers.map((w) => w.first));
    expect(feed()).toMatchObject({ documents: 2, watchers: WATCHERS });

    // Quiet documents: every statement the service sends is the feed's one poll.
    const before = { queries, polls: feed().polls };
    await until(() => feed().polls >= before.polls + 5);
    const after = { queries, polls: feed().polls };
    expect(after.queries - before.queries).toBe(after.polls - before.polls);

    await worker.startProcessing({ documentId: a, version: 1 });
    await worker.startProcessing({ documentId: b, version: 1 });
    await worker.recordProcessingResult({ documentId: a, version: 1, outcome: processed });
    await worker.recordProcessingResult({ documentId: b, version: 1, outcome: processed });
    await Promise.all(watchers.map((w) => w.end));
    for (const w of watchers) {
      expect(w.seen).toEqual([ProcessingStatus.UPLOADED, ProcessingStatus.PROCESSING, ProcessingStatus.PROCESSED]);
    }
    // With nothing watched the feed stops polling.
    await until(() => feed().watchers === 0);
    const idle = feed().polls;
    await new Promise((r) => setTimeout(r, 500));
    expect(feed().polls).toBe(idle);
  });

  it("a watcher who may no longer see the document hears what a new watch would; others watch on", async () => {
    const doctor = await as("doctor");
    const doctor2 = await as("doctor2");
    const admin = await as("admin");
    const id = (await doctor.upload(upload("Shared, then not"))).document!.id;
    const stranger = watch(doctor2, id);
    const owner = watch(doctor, id);
    const overseer = watch(admin, id);
    await Promise.all([stranger.first, owner.first, overseer.first]);

    await doctor.updateDocument({
      document: { id, visibility: Visibility.PRIVATE } as never,
      updateMask: { paths: ["visibility"] },
    });
    const ended = await rejection(stranger.end);
    const fresh = await rejection(watch(doctor2, id).end);
    expect([ended.code, ended.rawMessage]).toEqual([Code.NotFound, `document ${id} does not exist`]);
    expect([ended.code, ended.rawMessage]).toEqual([fresh.code, fresh.rawMessage]);
    expect(stranger.seen).toEqual([ProcessingStatus.UPLOADED]);

    // The owner and an admin still see it, and still hear of its progress.
    await worker.startProcessing({ documentId: id, version: 1 });
    await worker.recordProcessingResult({ documentId: id, version: 1, outcome: processed });
    await owner.end;
    await overseer.end;
    for (const w of [owner, overseer]) {
      expect(w.seen).toEqual([ProcessingStatus.UPLOADED, ProcessingStatus.PROCESSING, ProcessingStatus.PROCESSED]);
    }
  });

  it.runIf(backend.name === "postgres")(
    "changes made through another replica reach this one's watchers, visibility included",
    async () => {
      const other = await startDocuments(env(), { uploadSweepIntervalMs: 0 });
      stops.unshift(other.stop);
      const otherAddress = `127.0.0.1:${other.port}`;
      const workerOnOther = createMeshClient(DocumentProcessingService, otherAddress, {
        headers: await identity.serviceBearer("processing"),
        defaultTimeoutMs: 20_000,
      });
      closers.push(workerOnOther);
      const doctor = await as("doctor");
      const doctorOnOther = await as("doctor", otherAddress);
      const doctor2 = await as("doctor2");

      const id = (await doctor.upload(upload("Across replicas"))).document!.id;
      const watchers = Array.from({ length: 20 }, () => watch(doctor, id));
      const stranger = watch(doctor2, id);
      await Promise.all([...watchers, stranger].map((w) => w.first));

      await doctorOnOther.updateDocument({
        document: { id, visibility: Visibility.PRIVATE } as never,
        updateMask: { paths: ["visibility"] },
      });
      expect((await rejection(stranger.end)).code).toBe(Code.NotFound);

      await workerOnOther.startProcessing({ documentId: id, version: 1 });
      await workerOnOther.recordProcessingResult({ documentId: id, version: 1, outcome: processed });
      await Promise.all(watchers.map((w) => w.end));
      for (const w of watchers) {
        expect(w.seen).toEqual([ProcessingStatus.UPLOADED, ProcessingStatus.PROCESSING, ProcessingStatus.PROCESSED]);
      }

      // Deleted elsewhere: the watch ends just as it would here.
      const doomed = (await doctor.upload(upload("Deleted elsewhere"))).document!.id;
      const watcher = watch(doctor, doomed);
      await watcher.first;
      await doctorOnOther.deleteDocument({ id: doomed });
      const gone = await rejection(watcher.end);
      expect([gone.code, gone.rawMessage]).toEqual([Code.NotFound, `document ${doomed} was deleted`]);
    },
  );
});
