import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  DocumentService,
  DocumentType,
  ProcessingStatus,
  Visibility,
  type UploadRequest,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { startGateway } from "../../gateway/main.js";
import { backends, testEnv } from "../../test/support/backends.js";
import { startTestIdentity, type TestIdentity } from "../../test/support/identity.js";
import { startDocuments } from "./main.js";
import { rejection } from "../../test/support/rejection.js";
import { personaClients } from "../../test/support/documents.js";

type Client = ReturnType<typeof createMeshClient<typeof DocumentService>>;
type Part = UploadRequest["part"];

const pdf = (text: string) =>
  Buffer.from(`%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n% ${text}\n${"x".repeat(5000)}\n%%EOF\n`);
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

async function* parts(...items: Part[]): AsyncIterable<{ part: Part }> {
  for (const part of items) yield { part };
}

function chunks(bytes: Buffer, size = 64 * 1024): Part[] {
  const out: Part[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push({ case: "chunk", value: bytes.subarray(i, i + size) });
  return out;
}

const newDoc = (title: string, extra: Record<string, unknown> = {}): Part => ({
  case: "header",
  value: {
    document: { title, documentType: DocumentType.RESEARCH_PAPER, ...extra },
    filename: "paper.pdf",
    declaredMimeType: "application/pdf",
  } as never,
});

/** Every file under the blob root, temp files included. */
function filesUnder(root: string): string[] {
  return readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => path.join(d.parentPath, d.name));
}

describe.each(backends())("uploads on $name", (backend) => {
  const blobDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-upload-test-"));
  let identity: TestIdentity;
  let stop: () => Promise<void>;
  let stopGateway: () => Promise<void>;
  let address: string;
  let gatewayUrl: string;
  let doctor: Client;
  const { as, closeAll } = personaClients(
    () => identity,
    () => address,
    20_000,
  );

  beforeAll(async () => {
    identity = await startTestIdentity();
    const svc = await startDocuments({
      ...testEnv,
      ...backend.env,
      IDENTITY_TARGET: identity.target,
      BLOB_DIR: blobDir,
      UPLOAD_MAX_BYTES: "256KiB",
    });
    stop = svc.stop;
    address = `127.0.0.1:${svc.port}`;
    const gw = await startGateway(
      { ...testEnv, IDENTITY_TARGET: identity.target, DOCUMENTS_TARGET: address },
      { services: [DocumentService] },
    );
    stopGateway = gw.stop;
    gatewayUrl = `http://127.0.0.1:${gw.port}`;
    doctor = await as("doctor");
  });
  afterAll(async () => {
    closeAll();
    await stopGateway?.();
    await stop?.();
    await identity?.stop();
    rmSync(blobDir, { recursive: true, force: true });
  });

  it("creates a document from a streamed file, detects its type and stores exactly its bytes", async () => {
    const file = pdf("first");
    const res = await doctor.upload(parts(newDoc("Streamed paper"), ...chunks(file, 1000)));
    expect(res.version).toMatchObject({
      version: 1,
      sha256: sha(file),
      sizeBytes: BigInt(file.length),
      mimeType: "application/pdf",
      filename: "paper.pdf",
      needsOcr: false,
    });
    expect(res.document).toMatchObject({
      version: 1,
      sizeBytes: BigInt(file.length),
      mimeType: "application/pdf",
      processingStatus: ProcessingStatus.UPLOADED,
    });
    const back: Buffer[] = [];
    for await (const m of doctor.readContent({ documentId: res.document!.id })) back.push(Buffer.from(m.chunk));
    expect(Buffer.concat(back).equals(file)).toBe(true);
  });

  it("a new upload for an existing document makes a new version; earlier versions stay readable", async () => {
    const v1 = pdf("v1");
    const v2 = Buffer.from("Plain text notes, second version.\n".repeat(50));
    const { document } = await doctor.upload(parts(newDoc("Versioned"), ...chunks(v1)));
    const second = await doctor.upload(
      parts({ case: "header", value: { documentId: document!.id, filename: "notes.txt" } as never }, ...chunks(v2)),
    );
    expect(second.version!.version).toBe(2);
    expect(second.document!.mimeType).toMatch(/^text\/plain/);
    const read = async (version: number) => {
      const out: Buffer[] = [];
      for await (const m of doctor.readContent({ documentId: document!.id, version })) out.push(Buffer.from(m.chunk));
      return Buffer.concat(out);
    };
    expect((await read(1)).equals(v1)).toBe(true);
    expect((await read(0)).equals(v2)).toBe(true);
    expect((await doctor.listVersions({ documentId: document!.id })).versions.map((v) => v.version)).toEqual([2, 1]);
  });

  it("carries client streaming through the gateway over h2c", async () => {
    const viaGateway = createClient(
      DocumentService,
      createGrpcTransport({
        baseUrl: gatewayUrl,
        interceptors: [
          (next) => async (req) => (
            req.header.set("authorization", (await identity.bearer("doctor")).authorization),
            next(req)
          ),
        ],
      }),
    );
    const file = pdf("through the gateway");
    const res = await viaGateway.upload(parts(newDoc("Via gateway"), ...chunks(file)));
    expect(res.version!.sha256).toBe(sha(file));
  });

  describe("refusals, each leaving nothing behind", () => {
    const before = () => filesUnder(blobDir).length;

    it.each([
      [
        "a stream without a header",
        () => parts(...chunks(pdf("x"))),
        Code.InvalidArgument,
        /first message of an upload must be its header/,
      ],
      [
        "a second header",
        () => parts(newDoc("two headers"), newDoc("again")),
        Code.InvalidArgument,
        /only the first message/,
      ],
      ["a zero-byte file", () => parts(newDoc("empty")), Code.InvalidArgument, /the file is empty/],
      [
        "a file of an unsupported type (ZIP)",
        () => parts(newDoc("zip"), { case: "chunk", value: Buffer.from("PK\u0003\u0004 zip archive bytes") }),
        Code.InvalidArgument,
        /cannot be accepted/,
      ],
      [
        "magic bytes that contradict the declared type",
        () =>
          parts(newDoc("liar"), { case: "chunk", value: Buffer.from("just some text, not a PDF at all\n".repeat(10)) }),
        Code.InvalidArgument,
        /declared as application\/pdf but its content is text\/plain/,
      ],
      [
        "a file over the size limit",
        () => parts(newDoc("too big"), ...chunks(pdf("big"), 64 * 1024), ...chunks(Buffer.alloc(300 * 1024, 0x41))),
        Code.ResourceExhausted,
        /^the file is larger than the 256 KiB limit$/,
      ],
      [
        "a wrong sha256",
        () =>
          parts(
            {
              case: "header",
              value: {
                document: { title: "bad digest", documentType: DocumentType.REVIEW },
                sha256: "0".repeat(64),
              } as never,
            },
            ...chunks(pdf("d")),
          ),
        Code.InvalidArgument,
        /SHA-256 does not match/,
      ],
      ["a new document without a title", () => parts(newDoc(""), ...chunks(pdf("t"))), Code.InvalidArgument, /title/],
    ] as Array<[string, () => AsyncIterable<{ part: Part }>, Code, RegExp]>)(
      "%s",
      async (_what, stream, code, message) => {
        const files = before();
        const listed = (await doctor.listDocuments({ pageSize: 100 })).documents.length;
        const err = await rejection(doctor.upload(stream()));
        expect(err.code).toBe(code);
        expect(err.rawMessage).toMatch(message);
        expect(filesUnder(blobDir).length).toBe(files);
        expect((await doctor.listDocuments({ pageSize: 100 })).documents.length).toBe(listed);
      },
    );

    it("a client that cancels mid-stream leaves no blob, no temp file and no document", async () => {
      const files = before();
      const listed = (await doctor.listDocuments({ pageSize: 100 })).documents.length;
      const controller = new AbortController();
      async function* slow() {
        yield { part: newDoc("cancelled") };
        for (const c of chunks(pdf("cancel"), 1024)) yield { part: c };
        await new Promise((r) => setTimeout(r, 200));
        controller.abort();
        await new Promise((r) => setTimeout(r, 1_000));
      }
      const err = await rejection(doctor.upload(slow(), { signal: controller.signal }));
      expect(err.code).toBe(Code.Canceled);
      await expect.poll(() => filesUnder(blobDir).length, { timeout: 5_000 }).toBe(files);
      expect((await doctor.listDocuments({ pageSize: 100 })).documents.length).toBe(listed);
    });
  });

  describe("ownership", () => {
    it("nobody but the uploader or an admin adds a version; a private document is not even found", async () => {
      const { document: priv } = await doctor.upload(parts(newDoc("private paper"), ...chunks(pdf("p"))));
      const { document: shared } = await doctor.upload(
        parts(newDoc("shared paper", { visibility: Visibility.PLATFORM }), ...chunks(pdf("s"))),
      );
      const other = await as("doctor2");
      const header = (id: string): Part => ({ case: "header", value: { documentId: id } as never });
      expect((await rejection(other.upload(parts(header(priv!.id), ...chunks(pdf("x")))))).code).toBe(Code.NotFound);
      expect((await rejection(other.upload(parts(header(shared!.id), ...chunks(pdf("x")))))).code).toBe(
        Code.PermissionDenied,
      );
      const readPrivate = async () => {
        for await (const _ of other.readContent({ documentId: priv!.id })) void _;
      };
      expect((await rejection(readPrivate())).code).toBe(Code.NotFound);
      const student = await as("student");
      expect((await rejection(student.upload(parts(newDoc("student paper"), ...chunks(pdf("s")))))).code).toBe(
        Code.PermissionDenied,
      );
      const admin = await as("admin");
      expect((await admin.upload(parts(header(priv!.id), ...chunks(pdf("admin"))))).version!.version).toBe(2);
    });
  });
});
