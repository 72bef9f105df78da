import { createHash, randomBytes, randomUUID } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code } from "@connectrpc/connect";
import {
  DocumentService,
  DocumentType,
  UploadState,
  Visibility,
  type UploadHeader,
  type UploadSession,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { startGateway } from "../../gateway/main.js";
import { backends, testEnv } from "../../test/support/backends.js";
import { startTestIdentity, type TestIdentity } from "../../test/support/identity.js";
import { rejection } from "../../test/support/rejection.js";
import { paperPdf, TEXT_NOTES } from "../../test/fixtures/documents/make-fixtures.js";
import { startDocuments } from "./main.js";
import { personaClients } from "../../test/support/documents.js";

type Client = ReturnType<typeof createMeshClient<typeof DocumentService>>;

const MiB = 1024 * 1024;
const PART = 4 * MiB;
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
/** A real PDF followed by random bytes: detected as PDF, and no two are alike. */
const bigPdf = (size: number) => {
  const head = paperPdf();
  return Buffer.concat([head, randomBytes(size - head.length)]);
};

const newDoc = (title: string, extra: Partial<UploadHeader> = {}): UploadHeader =>
  ({
    document: { title, documentType: DocumentType.RESEARCH_PAPER },
    filename: "paper.pdf",
    declaredMimeType: "application/pdf",
    ...extra,
  }) as UploadHeader;

async function readAll(client: Client, documentId: string, version = 0): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const m of client.readContent({ documentId, version })) out.push(Buffer.from(m.chunk));
  return Buffer.concat(out);
}

/** Sends `file` from `from` on in parts of `size`, each at the offset the previous answer gave. */
async function sendFrom(client: Client, upload: UploadSession, file: Buffer, size: number): Promise<UploadSession> {
  let s = upload;
  while (Number(s.nextOffset) < file.length) {
    const at = Number(s.nextOffset);
    s = (await client.uploadPart({ uploadId: s.uploadId, offset: BigInt(at), data: file.subarray(at, at + size) }))
      .upload!;
  }
  return s;
}

describe.each(backends())("resumable uploads on $name", (backend) => {
  const blobDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-resumable-"));
  const shortBlobDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-resumable-short-"));
  const staged = (dir: string, id: string) => path.join(dir, "uploads", `${id}.part`);
  const orphan = staged(shortBlobDir, randomUUID());
  const stranger = path.join(shortBlobDir, "uploads", "not-an-upload.txt");

  let identity: TestIdentity;
  const stops: Array<() => Promise<void>> = [];
  let address: string;
  let shortAddress: string;
  let sweepShort: () => Promise<{ expired: number; orphans: number }>;
  let gatewayUrl: string;
  let doctor: Client;
  const { as, closeAll } = personaClients(
    () => identity,
    () => address,
  );

  beforeAll(async () => {
    identity = await startTestIdentity();
    stops.push(() => identity.stop());
    // Default message and body limits throughout: they are what must carry a 4 MiB part.
    const svc = await startDocuments({
      ...testEnv,
      ...backend.env,
      IDENTITY_TARGET: identity.target,
      BLOB_DIR: blobDir,
      UPLOAD_MAX_BYTES: "16MiB",
    });
    stops.unshift(svc.stop);
    address = `127.0.0.1:${svc.port}`;

    // Left behind "by a crash": the next start removes the part file but not what is not ours.
    mkdirSync(path.dirname(orphan), { recursive: true });
    writeFileSync(orphan, "bytes of an upload whose row is gone");
    writeFileSync(stranger, "not ours");
    const short = await startDocuments(
      {
        ...testEnv,
        ...backend.env,
        DOCUMENTS_DB_SCHEMA: `${backend.env.DOCUMENTS_DB_SCHEMA}_short`,
        IDENTITY_TARGET: identity.target,
        BLOB_DIR: shortBlobDir,
        UPLOAD_SESSION_TTL_MS: "1000",
      },
      { uploadSweepIntervalMs: 0 },
    );
    stops.unshift(short.stop);
    shortAddress = `127.0.0.1:${short.port}`;
    sweepShort = short.sweepUploads;

    const gw = await startGateway(
      { ...testEnv, IDENTITY_TARGET: identity.target, DOCUMENTS_TARGET: address },
      { services: [DocumentService] },
    );
    stops.unshift(gw.stop);
    gatewayUrl = `http://127.0.0.1:${gw.port}`;
    doctor = await as("doctor");
  });

  afterAll(async () => {
    closeAll();
    for (const stop of stops) await stop();
    rmSync(blobDir, { recursive: true, force: true });
    rmSync(shortBlobDir, { recursive: true, force: true });
  });

  it("start, parts, complete: the version holds exactly the bytes, and the session says so", async () => {
    const file = paperPdf();
    const { upload } = await doctor.startUpload({ header: newDoc("Resumable paper"), sizeBytes: BigInt(file.length) });
    expect(upload).toMatchObject({
      state: UploadState.OPEN,
      nextOffset: 0n,
      sizeBytes: BigInt(file.length),
      maxPartBytes: PART,
      filename: "paper.pdf",
      documentId: "",
    });
    expect(existsSync(staged(blobDir, upload!.uploadId))).toBe(true);
    // Uneven parts, the first shorter than the type sniff window.
    const cuts = [0, 1000, 2000, file.length];
    let last: UploadSession | undefined;
    for (let i = 0; i + 1 < cuts.length; i++) {
      last = (
        await doctor.uploadPart({
          uploadId: upload!.uploadId,
          offset: BigInt(cuts[i]!),
          data: file.subarray(cuts[i], cuts[i + 1]),
        })
      ).upload;
      expect(last!.nextOffset).toBe(BigInt(cuts[i + 1]!));
    }
    const done = await doctor.completeUpload({ uploadId: upload!.uploadId, sha256: sha(file) });
    expect(done.version).toMatchObject({
      version: 1,
      sha256: sha(file),
      sizeBytes: BigInt(file.length),
      mimeType: "application/pdf",
      filename: "paper.pdf",
      needsOcr: false,
    });
    expect(done.document).toMatchObject({ title: "Resumable paper", version: 1, mimeType: "application/pdf" });
    expect(done.upload).toMatchObject({
      state: UploadState.COMPLETED,
      documentId: done.document!.id,
      version: 1,
      nextOffset: BigInt(file.length),
    });
    expect((await readAll(doctor, done.document!.id)).equals(file)).toBe(true);
    const versions = (await doctor.listVersions({ documentId: done.document!.id })).versions;
    expect(versions.map((v) => [v.version, v.sha256, v.uploadedBy])).toEqual([
      [1, sha(file), await identity.userId("doctor")],
    ]);
    expect(existsSync(staged(blobDir, upload!.uploadId))).toBe(false);
  });

  it("resumes after a disconnect from where GetUploadStatus says; a repeated part changes nothing", async () => {
    const file = bigPdf(200 * 1024);
    const part = 64 * 1024;
    const first = await as("doctor");
    const { upload } = await first.startUpload({ header: newDoc("Interrupted"), sizeBytes: BigInt(file.length) });
    for (const at of [0, part])
      await first.uploadPart({ uploadId: upload!.uploadId, offset: BigInt(at), data: file.subarray(at, at + part) });
    first.close();

    const second = await as("doctor");
    const status = (await second.getUploadStatus({ uploadId: upload!.uploadId })).upload!;
    expect(status.nextOffset).toBe(BigInt(2 * part));
    const again = (await second.uploadPart({ uploadId: upload!.uploadId, offset: 0n, data: file.subarray(0, part) }))
      .upload!;
    expect(again.nextOffset).toBe(BigInt(2 * part));
    // The retried part did not move the expiry either: nothing was written.
    expect(again.expireTime).toEqual(status.expireTime);
    const end = await sendFrom(second, status, file, part);
    expect(end.nextOffset).toBe(BigInt(file.length));
    const done = await second.completeUpload({ uploadId: upload!.uploadId, sha256: sha(file) });
    expect((await readAll(second, done.document!.id)).equals(file)).toBe(true);
  });

  it("each part pushes the expiry out", async () => {
    const file = paperPdf();
    const { upload } = await doctor.startUpload({ header: newDoc("Expiry moves"), sizeBytes: BigInt(file.length) });
    await new Promise((r) => setTimeout(r, 20));
    const after = (await doctor.uploadPart({ uploadId: upload!.uploadId, offset: 0n, data: file.subarray(0, 100) }))
      .upload!;
    expect(after.expireTime!.seconds * 1000n + BigInt(after.expireTime!.nanos / 1e6)).toBeGreaterThan(
      upload!.expireTime!.seconds * 1000n + BigInt(upload!.expireTime!.nanos / 1e6),
    );
  });

  describe("parts and completions that do not fit are refused with a sentence", () => {
    it("a part at the wrong offset names the offset expected", async () => {
      const file = bigPdf(20_000);
      const { upload } = await doctor.startUpload({ header: newDoc("Offsets"), sizeBytes: BigInt(file.length) });
      await doctor.uploadPart({ uploadId: upload!.uploadId, offset: 0n, data: file.subarray(0, 5000) });
      for (const [offset, length] of [
        [6000, 100],
        [2000, 4000],
      ] as const) {
        const err = await rejection(
          doctor.uploadPart({
            uploadId: upload!.uploadId,
            offset: BigInt(offset),
            data: file.subarray(offset, offset + length),
          }),
        );
        expect(err.code).toBe(Code.FailedPrecondition);
        expect(err.rawMessage).toMatch(/continues at byte 5000/);
      }
      expect((await doctor.getUploadStatus({ uploadId: upload!.uploadId })).upload!.nextOffset).toBe(5000n);
    });

    it("a part over 4 MiB is refused by the contract's validation", async () => {
      const { upload } = await doctor.startUpload({ header: newDoc("Too big a part"), sizeBytes: BigInt(8 * MiB) });
      const err = await rejection(
        doctor.uploadPart({ uploadId: upload!.uploadId, offset: 0n, data: bigPdf(PART + 1) }),
      );
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.rawMessage).toMatch(/data/);
      expect((await doctor.getUploadStatus({ uploadId: upload!.uploadId })).upload!.nextOffset).toBe(0n);
      // Exactly 4 MiB passes: the mesh's message limit leaves room for it.
      const ok = await doctor.uploadPart({ uploadId: upload!.uploadId, offset: 0n, data: bigPdf(PART) });
      expect(ok.upload!.nextOffset).toBe(BigInt(PART));
    });

    it("a file over UPLOAD_MAX_BYTES is refused at the start, before any byte", async () => {
      const before = readdirSync(path.join(blobDir, "uploads")).length;
      const err = await rejection(doctor.startUpload({ header: newDoc("Too big"), sizeBytes: BigInt(16 * MiB + 1) }));
      expect(err.code).toBe(Code.ResourceExhausted);
      expect(err.rawMessage).toMatch(/more than the 16 MiB an upload may carry/);
      expect(readdirSync(path.join(blobDir, "uploads")).length).toBe(before);
    });

    it("bytes beyond the announced size are refused", async () => {
      const file = Buffer.from(TEXT_NOTES);
      const { upload } = await doctor.startUpload({
        header: newDoc("Short", { declaredMimeType: "text/plain" }),
        sizeBytes: 100n,
      });
      const err = await rejection(doctor.uploadPart({ uploadId: upload!.uploadId, offset: 0n, data: file }));
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.rawMessage).toMatch(new RegExp(`would end at byte ${file.length}, past the 100 bytes announced`));
    });

    it.each([
      [
        "content contradicting the declared type",
        Buffer.from("just some text, not a PDF at all\n".repeat(200)),
        /declared as application\/pdf but its content is text\/plain/,
      ],
      [
        "a type that is not accepted (ZIP)",
        Buffer.concat([Buffer.from("PK\u0003\u0004"), randomBytes(6000)]),
        /cannot be accepted: The file is a ZIP archive/,
      ],
    ])("%s is refused at the first part, and the upload ends", async (_what, file, message) => {
      const { upload } = await doctor.startUpload({ header: newDoc("Liar"), sizeBytes: BigInt(file.length) });
      const err = await rejection(
        doctor.uploadPart({ uploadId: upload!.uploadId, offset: 0n, data: file.subarray(0, 4096) }),
      );
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.rawMessage).toMatch(message);
      expect((await rejection(doctor.getUploadStatus({ uploadId: upload!.uploadId }))).code).toBe(Code.NotFound);
      expect(existsSync(staged(blobDir, upload!.uploadId))).toBe(false);
    });

    it("the type is decided as soon as enough bytes have arrived, even across parts", async () => {
      const file = Buffer.from("plain text, declared as a PDF\n".repeat(300));
      const { upload } = await doctor.startUpload({ header: newDoc("Slow liar"), sizeBytes: BigInt(file.length) });
      const first = await doctor.uploadPart({ uploadId: upload!.uploadId, offset: 0n, data: file.subarray(0, 100) });
      expect(first.upload!.nextOffset).toBe(100n);
      const err = await rejection(
        doctor.uploadPart({ uploadId: upload!.uploadId, offset: 100n, data: file.subarray(100, 5000) }),
      );
      expect(err.rawMessage).toMatch(/declared as application\/pdf but its content is text\/plain/);
    });

    it("a SHA-256 mismatch is refused and leaves the upload open for a corrected completion", async () => {
      const file = paperPdf();
      const { upload } = await doctor.startUpload({ header: newDoc("Digest"), sizeBytes: BigInt(file.length) });
      await sendFrom(doctor, upload!, file, 4096);
      const err = await rejection(doctor.completeUpload({ uploadId: upload!.uploadId, sha256: "0".repeat(64) }));
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.rawMessage).toMatch(new RegExp(`have SHA-256 ${sha(file)}, not 0{64}`));
      expect((await doctor.getUploadStatus({ uploadId: upload!.uploadId })).upload!.state).toBe(UploadState.OPEN);
      const done = await doctor.completeUpload({ uploadId: upload!.uploadId, sha256: sha(file) });
      expect(done.version!.sha256).toBe(sha(file));
    });

    it("a sha256 given at the start must match the one given at completion", async () => {
      const file = paperPdf();
      const { upload } = await doctor.startUpload({
        header: newDoc("Digest twice", { sha256: "a".repeat(64) }),
        sizeBytes: BigInt(file.length),
      });
      await sendFrom(doctor, upload!, file, PART);
      const err = await rejection(doctor.completeUpload({ uploadId: upload!.uploadId, sha256: sha(file) }));
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.rawMessage).toMatch(/given when the upload started/);
    });

    it("completing with bytes missing says how many", async () => {
      const file = bigPdf(20_000);
      const { upload } = await doctor.startUpload({ header: newDoc("Incomplete"), sizeBytes: BigInt(file.length) });
      await doctor.uploadPart({ uploadId: upload!.uploadId, offset: 0n, data: file.subarray(0, 5000) });
      const err = await rejection(doctor.completeUpload({ uploadId: upload!.uploadId, sha256: sha(file) }));
      expect(err.code).toBe(Code.FailedPrecondition);
      expect(err.rawMessage).toMatch(
        new RegExp(
          `${file.length - 5000} of the file's ${file.length} bytes are still missing; send them from byte 5000`,
        ),
      );
    });
  });

  it("completing twice, even at once, makes one version and answers both with it", async () => {
    const file = paperPdf();
    const { upload } = await doctor.startUpload({ header: newDoc("Twice"), sizeBytes: BigInt(file.length) });
    await sendFrom(doctor, upload!, file, PART);
    const other = await as("doctor");
    const [a, b] = await Promise.all([
      doctor.completeUpload({ uploadId: upload!.uploadId, sha256: sha(file) }),
      other.completeUpload({ uploadId: upload!.uploadId, sha256: sha(file) }),
    ]);
    expect(b.document!.id).toBe(a.document!.id);
    expect(b.version!.version).toBe(a.version!.version);
    const later = await doctor.completeUpload({ uploadId: upload!.uploadId, sha256: sha(file) });
    expect([later.document!.id, later.version!.version, later.upload!.state]).toEqual([
      a.document!.id,
      1,
      UploadState.COMPLETED,
    ]);
    expect((await doctor.listVersions({ documentId: a.document!.id })).versions).toHaveLength(1);
    // A completed upload is not aborted: its version exists.
    expect((await rejection(doctor.abortUpload({ uploadId: upload!.uploadId }))).code).toBe(Code.FailedPrecondition);
  });

  it("nobody but the uploader sees or touches the upload, not even an admin", async () => {
    const file = bigPdf(20_000);
    const { upload } = await doctor.startUpload({ header: newDoc("Mine"), sizeBytes: BigInt(file.length) });
    await doctor.uploadPart({ uploadId: upload!.uploadId, offset: 0n, data: file.subarray(0, 5000) });
    for (const who of ["doctor2", "admin"] as const) {
      const c = await as(who);
      const id = upload!.uploadId;
      for (const call of [
        () => c.getUploadStatus({ uploadId: id }),
        () => c.uploadPart({ uploadId: id, offset: 5000n, data: file.subarray(5000) }),
        () => c.completeUpload({ uploadId: id, sha256: sha(file) }),
      ]) {
        const err = await rejection(call());
        expect(err.code).toBe(Code.NotFound);
        expect(err.rawMessage).toBe(`upload ${id} does not exist`);
      }
      // Answers as for an unknown id, and leaves the upload alone.
      await c.abortUpload({ uploadId: id });
    }
    expect((await doctor.getUploadStatus({ uploadId: upload!.uploadId })).upload!.nextOffset).toBe(5000n);
    expect(existsSync(staged(blobDir, upload!.uploadId))).toBe(true);
  });

  it("StartUpload follows the streamed upload's rules about who may add what", async () => {
    const student = await as("student");
    expect((await rejection(student.startUpload({ header: newDoc("Student"), sizeBytes: 10n }))).code).toBe(
      Code.PermissionDenied,
    );
    const { document: priv } = await doctor.createDocument({
      document: { title: "Private", documentType: DocumentType.REVIEW },
    });
    const { document: shared } = await doctor.createDocument({
      document: { title: "Shared", documentType: DocumentType.REVIEW, visibility: Visibility.PLATFORM },
    });
    const other = await as("doctor2");
    expect(
      (await rejection(other.startUpload({ header: { documentId: priv!.id } as UploadHeader, sizeBytes: 10n }))).code,
    ).toBe(Code.NotFound);
    expect(
      (await rejection(other.startUpload({ header: { documentId: shared!.id } as UploadHeader, sizeBytes: 10n }))).code,
    ).toBe(Code.PermissionDenied);
    const untitled = await rejection(doctor.startUpload({ header: newDoc(""), sizeBytes: 10n }));
    expect([untitled.code, untitled.rawMessage]).toEqual([Code.InvalidArgument, expect.stringMatching(/title/)]);
  });

  it("AbortUpload removes the session and its bytes, and may be repeated", async () => {
    const file = bigPdf(20_000);
    const { upload } = await doctor.startUpload({ header: newDoc("Abandoned"), sizeBytes: BigInt(file.length) });
    await doctor.uploadPart({ uploadId: upload!.uploadId, offset: 0n, data: file.subarray(0, 5000) });
    expect(existsSync(staged(blobDir, upload!.uploadId))).toBe(true);
    await doctor.abortUpload({ uploadId: upload!.uploadId });
    expect(existsSync(staged(blobDir, upload!.uploadId))).toBe(false);
    expect((await rejection(doctor.getUploadStatus({ uploadId: upload!.uploadId }))).code).toBe(Code.NotFound);
    expect(
      (await rejection(doctor.uploadPart({ uploadId: upload!.uploadId, offset: 5000n, data: file.subarray(5000) })))
        .code,
    ).toBe(Code.NotFound);
    await doctor.abortUpload({ uploadId: upload!.uploadId });
    await doctor.abortUpload({ uploadId: randomUUID() });
  });

  it("a resumable upload naming a document adds a version to it", async () => {
    const v1 = paperPdf();
    const first = await doctor.startUpload({ header: newDoc("Two versions"), sizeBytes: BigInt(v1.length) });
    await sendFrom(doctor, first.upload!, v1, PART);
    const { document } = await doctor.completeUpload({ uploadId: first.upload!.uploadId, sha256: sha(v1) });

    const v2 = Buffer.from(TEXT_NOTES.repeat(40));
    const second = await doctor.startUpload({
      header: { documentId: document!.id, filename: "letter.txt" } as UploadHeader,
      sizeBytes: BigInt(v2.length),
    });
    expect(second.upload!.documentId).toBe(document!.id);
    await sendFrom(doctor, second.upload!, v2, 3000);
    const done = await doctor.completeUpload({ uploadId: second.upload!.uploadId, sha256: sha(v2) });
    expect(done.version).toMatchObject({
      version: 2,
      filename: "letter.txt",
      mimeType: expect.stringMatching(/^text\/plain/),
    });
    expect(done.document).toMatchObject({ id: document!.id, version: 2 });
    expect((await doctor.listVersions({ documentId: document!.id })).versions.map((v) => v.version)).toEqual([2, 1]);
    expect((await readAll(doctor, document!.id, 1)).equals(v1)).toBe(true);
    expect((await readAll(doctor, document!.id)).equals(v2)).toBe(true);
  });

  describe("expiry", () => {
    it("staging files without a session are removed at start-up; files that are not uploads stay", () => {
      expect(existsSync(orphan)).toBe(false);
      expect(existsSync(stranger)).toBe(true);
    });

    it("an untouched upload expires: calls answer not_found, and the sweeper removes row and bytes", async () => {
      const short = await as("doctor", shortAddress);
      const file = bigPdf(20_000);
      const { upload } = await short.startUpload({ header: newDoc("Forgotten"), sizeBytes: BigInt(file.length) });
      await short.uploadPart({ uploadId: upload!.uploadId, offset: 0n, data: file.subarray(0, 5000) });
      // Completed uploads are kept only as long, too.
      const small = Buffer.from(TEXT_NOTES);
      const quick = await short.startUpload({
        header: newDoc("Finished", { declaredMimeType: "text/plain" }),
        sizeBytes: BigInt(small.length),
      });
      await short.uploadPart({ uploadId: quick.upload!.uploadId, offset: 0n, data: small });
      await short.completeUpload({ uploadId: quick.upload!.uploadId, sha256: sha(small) });

      await new Promise((r) => setTimeout(r, 1_200));
      for (const call of [
        () => short.getUploadStatus({ uploadId: upload!.uploadId }),
        () => short.uploadPart({ uploadId: upload!.uploadId, offset: 5000n, data: file.subarray(5000) }),
        () => short.completeUpload({ uploadId: upload!.uploadId, sha256: sha(file) }),
      ]) {
        const err = await rejection(call());
        expect([err.code, err.rawMessage]).toEqual([Code.NotFound, expect.stringMatching(/has expired/)]);
      }
      expect(existsSync(staged(shortBlobDir, upload!.uploadId))).toBe(true);

      const swept = await sweepShort();
      expect(swept.expired).toBeGreaterThanOrEqual(2);
      expect(existsSync(staged(shortBlobDir, upload!.uploadId))).toBe(false);
      for (const id of [upload!.uploadId, quick.upload!.uploadId]) {
        expect((await rejection(short.getUploadStatus({ uploadId: id }))).rawMessage).toBe(
          `upload ${id} does not exist`,
        );
      }
    });
  });

  it("through the gateway with Connect JSON over HTTP/1.1, 4 MiB parts, interrupted and resumed", async () => {
    const auth = await identity.bearer("doctor");
    const call = async (method: string, body: unknown, signal?: AbortSignal) => {
      const res = await fetch(`${gatewayUrl}/medmesh.documents.v1.DocumentService/${method}`, {
        method: "POST",
        headers: { "content-type": "application/json", ...auth },
        body: JSON.stringify(body),
        signal,
      });
      const json = (await res.json()) as Record<string, unknown>;
      if (res.status !== 200) throw new Error(`${method}: ${res.status} ${JSON.stringify(json)}`);
      return json as { upload: { uploadId: string; nextOffset?: string; state: string } } & Record<string, never>;
    };
    const file = bigPdf(9 * MiB + 12345);
    const part = (at: number) => ({ offset: at, data: file.subarray(at, at + PART).toString("base64") });

    const { upload } = await call("StartUpload", {
      header: {
        document: { title: "Large report", documentType: "DOCUMENT_TYPE_RESEARCH_PAPER" },
        filename: "report.pdf",
        declaredMimeType: "application/pdf",
      },
      sizeBytes: String(file.length),
    });
    const id = upload.uploadId;
    const first = await call("UploadPart", { uploadId: id, ...part(0) });
    expect(first.upload.nextOffset).toBe(String(PART));

    // The tab goes away while the second part is on the wire: it may or may not have arrived.
    const gone = new AbortController();
    const inFlight = call("UploadPart", { uploadId: id, ...part(PART) }, gone.signal).catch(() => undefined);
    setTimeout(() => gone.abort(), 1);
    await inFlight;

    const status = await call("GetUploadStatus", { uploadId: id });
    expect([String(PART), String(2 * PART)]).toContain(status.upload.nextOffset);
    // The page resends what it is unsure of, from the last offset it saw acknowledged.
    const repeat = await call("UploadPart", { uploadId: id, ...part(PART) });
    expect(repeat.upload.nextOffset).toBe(String(2 * PART));
    const resent = await call("UploadPart", { uploadId: id, ...part(0) });
    expect(resent.upload.nextOffset).toBe(String(2 * PART));
    const last = await call("UploadPart", { uploadId: id, ...part(2 * PART) });
    expect(last.upload.nextOffset).toBe(String(file.length));

    const done = (await call("CompleteUpload", { uploadId: id, sha256: sha(file) })) as unknown as {
      document: { id: string };
      version: { version: number; sizeBytes: string; sha256: string };
      upload: { state: string };
    };
    expect(done.version).toMatchObject({ version: 1, sizeBytes: String(file.length), sha256: sha(file) });
    expect(done.upload.state).toBe("UPLOAD_STATE_COMPLETED");
    expect((await readAll(doctor, done.document.id)).equals(file)).toBe(true);
  });
});
