import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, type ConnectError } from "@connectrpc/connect";
import { QuotaFailureSchema } from "../../gen/google/rpc/error_details_pb.js";
import {
  DocumentService,
  DocumentType,
  ProcessingStatus,
  Visibility,
  type UploadHeader,
  type UploadRequest,
  type WatchDocumentResponse,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { backends, testEnv } from "../../test/support/backends.js";
import { startTestIdentity, type TestIdentity } from "../../test/support/identity.js";
import { rejection } from "../../test/support/rejection.js";
import { startDocuments } from "./main.js";
import { personaClients } from "../../test/support/documents.js";

type Client = ReturnType<typeof createMeshClient<typeof DocumentService>>;

const MAX_SESSIONS = 3;
const MAX_OPEN_BYTES = 64 * 1024;
const MAX_WATCHES = 3;
const MAX_STREAMS = 2;

const header = (title: string): UploadHeader =>
  ({
    document: { title, documentType: DocumentType.OTHER },
    filename: "notes.txt",
    declaredMimeType: "text/plain",
  }) as UploadHeader;

const quotaOf = (err: ConnectError) => err.findDetails(QuotaFailureSchema)[0]?.violations[0];

/** Retries `attempt` until it succeeds: a slot given back by a cancelled call is freed as the server hears of it. */
async function eventually<T>(attempt: () => Promise<T>, tries = 100): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await attempt();
    } catch (err) {
      if (i >= tries) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** A watch held open: its first message, how it ends, and a way to hang up. */
function openWatch(client: Client, id: string, timeoutMs = 30_000) {
  const controller = new AbortController();
  const it = client.watchDocument({ id }, { signal: controller.signal, timeoutMs })[Symbol.asyncIterator]();
  const first: Promise<WatchDocumentResponse> = it.next().then((r) => {
    if (r.done) throw new Error("the watch ended before its first message");
    return r.value;
  });
  const end = first.then(async () => {
    for (;;) if ((await it.next()).done) return;
  });
  end.catch(() => undefined);
  return { first, end, cancel: () => controller.abort() };
}

describe.each(backends())("per-user limits on $name", (backend) => {
  const blobDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-limits-"));
  let identity: TestIdentity;
  const stops: Array<() => Promise<void>> = [];
  let address: string;
  const { as, closeAll } = personaClients(
    () => identity,
    () => address,
  );

  beforeAll(async () => {
    identity = await startTestIdentity();
    stops.push(() => identity.stop());
    const svc = await startDocuments(
      {
        ...testEnv,
        ...backend.env,
        IDENTITY_TARGET: identity.target,
        BLOB_DIR: blobDir,
        UPLOAD_MAX_OPEN_SESSIONS: String(MAX_SESSIONS),
        UPLOAD_MAX_OPEN_BYTES: "64KiB",
        UPLOAD_MAX_STREAMS: String(MAX_STREAMS),
        WATCH_MAX_PER_USER: String(MAX_WATCHES),
        WATCH_POLL_MS: "100",
      },
      { uploadSweepIntervalMs: 0 },
    );
    stops.unshift(svc.stop);
    address = `127.0.0.1:${svc.port}`;
  });

  afterAll(async () => {
    closeAll();
    for (const stop of stops) await stop();
    rmSync(blobDir, { recursive: true, force: true });
  });

  it("a user may hold so many open uploads; the next is refused with a sentence until one is completed or aborted", async () => {
    const doctor = await as("doctor");
    const start = (title: string, size = 100) => doctor.startUpload({ header: header(title), sizeBytes: BigInt(size) });
    const notes = Buffer.from("Clinic letter: blood pressure reviewed, lisinopril continued.\n");
    const first = (await start("open 1", notes.length)).upload!;
    await start("open 2");
    const third = (await start("open 3")).upload!;

    const refused = await rejection(start("one too many"));
    expect(refused.code).toBe(Code.ResourceExhausted);
    expect(refused.rawMessage).toBe(
      `you already have ${MAX_SESSIONS} uploads open, the most one user may have at once; complete or abort one of them (or let it expire) before starting another`,
    );
    expect(quotaOf(refused)).toMatchObject({
      subject: `user:${await identity.userId("doctor")}`,
      description: `open resumable uploads per user: ${MAX_SESSIONS}`,
    });
    // Another user's uploads are theirs to count.
    await (await as("researcher")).startUpload({ header: header("someone else's"), sizeBytes: 100n });

    await doctor.abortUpload({ uploadId: third.uploadId });
    const again = (await start("after an abort")).upload!;
    expect((await rejection(start("full again"))).code).toBe(Code.ResourceExhausted);

    // A completed upload is no longer open either.
    await doctor.uploadPart({ uploadId: first.uploadId, offset: 0n, data: notes });
    await doctor.completeUpload({
      uploadId: first.uploadId,
      sha256: createHash("sha256").update(notes).digest("hex"),
    });
    await start("after a completion");
    expect((await rejection(start("full once more"))).code).toBe(Code.ResourceExhausted);
    await doctor.abortUpload({ uploadId: again.uploadId });
  });

  it("the bytes a user's open uploads announce together are capped too", async () => {
    const doctor2 = await as("doctor2");
    const start = (size: number) => doctor2.startUpload({ header: header(`${size} bytes`), sizeBytes: BigInt(size) });
    const alone = await rejection(start(MAX_OPEN_BYTES + 1));
    expect([alone.code, alone.rawMessage]).toEqual([
      Code.ResourceExhausted,
      "this file's 64 KiB would take them past the 64 KiB one user may have open at once; upload a smaller file",
    ]);
    const big = (await start(40 * 1024)).upload!;
    const over = await rejection(start(30 * 1024));
    expect([over.code, over.rawMessage]).toEqual([
      Code.ResourceExhausted,
      "your open uploads already announce 40 KiB, and this file's 30 KiB would take them past the 64 KiB one user may have open at once; complete or abort one of them (or let it expire) before starting another",
    ]);
    expect(quotaOf(over)?.description).toBe(`bytes announced by open resumable uploads per user: ${MAX_OPEN_BYTES}`);
    // Exactly up to the limit is fine.
    const rest = (await start(24 * 1024)).upload!;
    await doctor2.abortUpload({ uploadId: big.uploadId });
    await start(30 * 1024);
    await doctor2.abortUpload({ uploadId: rest.uploadId });
  });

  it("a burst of concurrent starts never gets past the limit", async () => {
    const admin = await as("admin");
    const burst = await Promise.allSettled(
      Array.from({ length: 12 }, (_, i) =>
        admin.startUpload({ header: header(`burst ${i}`), sizeBytes: 100n }, { timeoutMs: 60_000 }),
      ),
    );
    const won = burst.filter((r) => r.status === "fulfilled");
    const lost = burst.flatMap((r) => (r.status === "rejected" ? [r.reason as ConnectError] : []));
    expect(won).toHaveLength(MAX_SESSIONS);
    expect(lost.map((e) => e.code)).toEqual(Array(12 - MAX_SESSIONS).fill(Code.ResourceExhausted));
  });

  it("a user may hold so many watches on this replica; cancelled and expired ones give their slot back", async () => {
    const doctor = await as("doctor");
    const doctor2 = await as("doctor2");
    const created = await doctor.createDocument({
      document: { title: "Watched a lot", documentType: DocumentType.OTHER, visibility: Visibility.PLATFORM },
    });
    const id = created.document!.id;
    const held = Array.from({ length: MAX_WATCHES }, () => openWatch(doctor, id));
    for (const w of held) expect((await w.first).status).toBe(ProcessingStatus.PENDING);

    const refused = await rejection(openWatch(doctor, id).first);
    expect([refused.code, refused.rawMessage]).toEqual([
      Code.ResourceExhausted,
      `you are already watching ${MAX_WATCHES} documents at once, the most one user may; stop one of those watches before starting another`,
    ]);
    expect(quotaOf(refused)?.description).toBe(`concurrent WatchDocument streams per user: ${MAX_WATCHES}`);
    // Someone else is not held back by it.
    const other = openWatch(doctor2, id);
    await other.first;
    other.cancel();

    // Hanging up frees the slot.
    held[0]!.cancel();
    expect((await rejection(held[0]!.end)).code).toBe(Code.Canceled);
    const replacement = await eventually(async () => {
      const w = openWatch(doctor, id);
      await w.first;
      return w;
    });
    expect((await rejection(openWatch(doctor, id).first)).code).toBe(Code.ResourceExhausted);

    // So does a watch that runs out of time.
    held[1]!.cancel();
    const short = await eventually(async () => {
      const w = openWatch(doctor, id, 1_000);
      await w.first;
      return w;
    });
    expect((await rejection(short.end)).code).toBe(Code.DeadlineExceeded);
    const afterDeadline = await eventually(async () => {
      const w = openWatch(doctor, id);
      await w.first;
      return w;
    });
    for (const w of [held[2]!, replacement, afterDeadline]) w.cancel();
  });

  it("a user may stream so many uploads at once on this replica", async () => {
    const researcher = await as("researcher");
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const started: Array<Promise<void>> = [];
    const held = (title: string): AsyncIterable<UploadRequest> => {
      let sent!: () => void;
      started.push(new Promise<void>((r) => (sent = r)));
      return (async function* () {
        yield { part: { case: "header", value: header(title) } } as never;
        sent();
        await gate;
        yield { part: { case: "chunk", value: Buffer.from(`${title}: notes on blood pressure\n`) } } as never;
      })();
    };
    const streaming = Array.from({ length: MAX_STREAMS }, (_, i) => researcher.upload(held(`streamed ${i}`)));
    await Promise.all(started);
    const refused = await rejection(researcher.upload(held("one stream too many")));
    expect([refused.code, refused.rawMessage]).toEqual([
      Code.ResourceExhausted,
      `you already have ${MAX_STREAMS} uploads streaming at once, the most one user may; let one of them finish before starting another`,
    ]);
    open();
    for (const s of await Promise.all(streaming)) expect(s.version!.version).toBe(1);
    const after = await researcher.upload(
      (async function* () {
        yield { part: { case: "header", value: header("after the others") } } as never;
        yield { part: { case: "chunk", value: Buffer.from("notes on blood pressure\n") } } as never;
      })(),
    );
    expect(after.version!.version).toBe(1);
  });
});
