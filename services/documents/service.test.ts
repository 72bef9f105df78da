import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import {
  DocumentService,
  DocumentType,
  ProcessingStatus,
  Visibility,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { backends, testEnv } from "../../test/support/backends.js";
import { startTestIdentity, type TestIdentity } from "../../test/support/identity.js";
import { startDocuments } from "./main.js";
import { rejection } from "../../test/support/rejection.js";

type Client = ReturnType<typeof createMeshClient<typeof DocumentService>>;

const base = {
  title: "Low-dose aspirin for primary prevention of stroke",
  documentType: DocumentType.RESEARCH_PAPER,
};

describe.each(backends())("documents service on $name", (backend) => {
  let stop: () => Promise<void>;
  let identity: TestIdentity;
  let address: string;
  let client: Client;
  const clients: Client[] = [];
  /** A client signed in as someone (or as nobody, with no headers at all). */
  const as = async (who?: Parameters<TestIdentity["bearer"]>[0], headers?: Record<string, string>): Promise<Client> => {
    const c = createMeshClient(DocumentService, address, {
      defaultTimeoutMs: 10_000,
      headers: headers ?? (who ? await identity.bearer(who) : {}),
    });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    identity = await startTestIdentity();
    const svc = await startDocuments({ ...testEnv, ...backend.env, IDENTITY_TARGET: identity.target });
    stop = svc.stop;
    address = `127.0.0.1:${svc.port}`;
    client = await as("doctor");
  });
  afterAll(async () => {
    for (const c of clients) c.close();
    await stop?.();
    await identity?.stop();
  });

  it("creates a document with every field and reads it back", async () => {
    const { document } = await client.createDocument({
      document: {
        ...base,
        authors: ["Ada Byron", "Grace Hopper"],
        journal: "The Lancet",
        publicationDate: "2021-02-28",
        doi: "10.1016/S0140-6736(21)00001-1",
        pmid: "33581234",
        specialty: "Neurology",
        visibility: Visibility.PLATFORM,
        metadata: { source: "import", "batch.id": "42" },
      },
    });
    expect(document!.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(document!.processingStatus).toBe(ProcessingStatus.PENDING);
    expect(document!.version).toBe(0);
    const got = await client.getDocument({ id: document!.id });
    expect(got.document).toMatchObject({
      title: base.title,
      authors: ["Ada Byron", "Grace Hopper"],
      journal: "The Lancet",
      publicationDate: "2021-02-28",
      doi: "10.1016/S0140-6736(21)00001-1",
      pmid: "33581234",
      specialty: "Neurology",
      visibility: Visibility.PLATFORM,
      metadata: { source: "import", "batch.id": "42" },
    });
    expect(got.document!.createTime).toBeDefined();
  });

  it("defaults visibility to private", async () => {
    const { document } = await client.createDocument({ document: base });
    expect(document!.visibility).toBe(Visibility.PRIVATE);
  });

  it("updates only the fields named in the mask", async () => {
    const { document } = await client.createDocument({
      document: { ...base, journal: "BMJ", specialty: "cardiology" },
    });
    const { document: updated } = await client.updateDocument({
      document: { id: document!.id, title: "Renamed", journal: "ignored because not in mask" },
      updateMask: create(FieldMaskSchema, { paths: ["title"] }),
    });
    expect(updated!.title).toBe("Renamed");
    expect(updated!.journal).toBe("BMJ");
    expect(updated!.specialty).toBe("cardiology");
  });

  it("clears an optional field when it is in the mask with an empty value", async () => {
    const { document } = await client.createDocument({ document: { ...base, journal: "BMJ" } });
    const { document: updated } = await client.updateDocument({
      document: { id: document!.id },
      updateMask: create(FieldMaskSchema, { paths: ["journal"] }),
    });
    expect(updated!.journal).toBe("");
  });

  it("soft-deletes: the document is gone for reads, a second delete is not_found, its DOI is free again", async () => {
    const doi = `10.5555/delete-${Date.now()}`;
    const { document } = await client.createDocument({ document: { ...base, doi } });
    await client.deleteDocument({ id: document!.id });
    expect((await rejection(client.getDocument({ id: document!.id }))).code).toBe(Code.NotFound);
    expect((await rejection(client.deleteDocument({ id: document!.id }))).code).toBe(Code.NotFound);
    const again = await client.createDocument({ document: { ...base, doi } });
    expect(again.document!.doi).toBe(doi);
  });

  describe("listing", () => {
    const specialty = `spec-${Math.random().toString(36).slice(2, 8)}`;
    const ids: string[] = [];
    beforeAll(async () => {
      for (let i = 0; i < 7; i++) {
        const { document } = await client.createDocument({
          document: {
            ...base,
            title: `List ${i}`,
            specialty,
            documentType: i % 2 ? DocumentType.REVIEW : DocumentType.GUIDELINE,
            publicationDate: `2020-0${i + 1}-15`,
          },
        });
        ids.push(document!.id);
      }
    });

    it("pages newest first with a cursor, each document exactly once, even when rows are added meanwhile", async () => {
      const seen: string[] = [];
      let token = "";
      let pages = 0;
      do {
        const page = await client.listDocuments({ specialty, pageSize: 3, pageToken: token });
        seen.push(...page.documents.map((d) => d.id));
        token = page.nextPageToken;
        if (pages === 0) await client.createDocument({ document: { ...base, specialty, title: "added while paging" } });
        pages++;
      } while (token);
      expect(seen).toEqual([...ids].reverse());
      expect(pages).toBe(3);
    });

    it("filters by type, specialty (case-insensitively) and publication date range", async () => {
      const reviews = await client.listDocuments({
        specialty: specialty.toUpperCase(),
        documentType: DocumentType.REVIEW,
        pageSize: 100,
      });
      expect(reviews.documents.map((d) => d.title).sort()).toEqual(["List 1", "List 3", "List 5"]);
      const ranged = await client.listDocuments({
        specialty,
        publishedAfter: "2020-03-01",
        publishedBefore: "2020-05-31",
        pageSize: 100,
      });
      expect(ranged.documents.map((d) => d.title).sort()).toEqual(["List 2", "List 3", "List 4"]);
    });

    it("filters by status and uploader", async () => {
      const pending = await client.listDocuments({
        specialty,
        processingStatus: ProcessingStatus.PENDING,
        uploadedBy: await identity.userId("doctor"),
        pageSize: 100,
      });
      expect(pending.documents.length).toBeGreaterThanOrEqual(7);
      const none = await client.listDocuments({ specialty, processingStatus: ProcessingStatus.INDEXED, pageSize: 100 });
      expect(none.documents).toHaveLength(0);
      const nobody = await client.listDocuments({ specialty, uploadedBy: "someone-else", pageSize: 100 });
      expect(nobody.documents).toHaveLength(0);
    });

    it("refuses a page token reused with different filters", async () => {
      const first = await client.listDocuments({ specialty, pageSize: 2 });
      const err = await rejection(
        client.listDocuments({ specialty, documentType: DocumentType.REVIEW, pageToken: first.nextPageToken }),
      );
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.rawMessage).toMatch(/different filters/);
    });
  });

  describe("who may do what", () => {
    let privateId: string;
    let sharedId: string;
    beforeAll(async () => {
      privateId = (await client.createDocument({ document: { ...base, title: "doctor's private notes" } })).document!
        .id;
      sharedId = (
        await client.createDocument({
          document: { ...base, title: "shared with the platform", visibility: Visibility.PLATFORM },
        })
      ).document!.id;
    });

    it("records the signed-in uploader", async () => {
      const { document } = await client.getDocument({ id: privateId });
      expect(document!.uploadedBy).toBe(await identity.userId("doctor"));
    });

    it("a private document is invisible to other users, reported exactly like a missing one", async () => {
      for (const who of ["doctor2", "student", "researcher"] as const) {
        const other = await as(who);
        const err = await rejection(other.getDocument({ id: privateId }));
        expect(err.code).toBe(Code.NotFound);
        expect(err.rawMessage).toBe(`document ${privateId} does not exist`);
        const listed = await other.listDocuments({ pageSize: 100 });
        expect(listed.documents.map((d) => d.id)).not.toContain(privateId);
        expect(
          (
            await rejection(
              other.updateDocument({
                document: { id: privateId, title: "x" },
                updateMask: create(FieldMaskSchema, { paths: ["title"] }),
              }),
            )
          ).code,
        ).toBe(Code.NotFound);
        expect((await rejection(other.deleteDocument({ id: privateId }))).code).toBe(Code.NotFound);
      }
    });

    it("a platform document is readable by every signed-in user but changed only by its uploader or an admin", async () => {
      const student = await as("student");
      expect((await student.getDocument({ id: sharedId })).document!.title).toBe("shared with the platform");
      expect((await student.listDocuments({ pageSize: 100 })).documents.map((d) => d.id)).toContain(sharedId);
      const doctor2 = await as("doctor2");
      const upd = await rejection(
        doctor2.updateDocument({
          document: { id: sharedId, title: "hijacked" },
          updateMask: create(FieldMaskSchema, { paths: ["title"] }),
        }),
      );
      expect(upd.code).toBe(Code.PermissionDenied);
      expect(upd.rawMessage).toBe("only the uploader or an admin may change this document");
      expect((await rejection(doctor2.deleteDocument({ id: sharedId }))).code).toBe(Code.PermissionDenied);
      expect((await client.getDocument({ id: sharedId })).document!.title).toBe("shared with the platform");
    });

    it("an admin sees and changes everything", async () => {
      const admin = await as("admin");
      expect((await admin.getDocument({ id: privateId })).document!.id).toBe(privateId);
      expect((await admin.listDocuments({ pageSize: 100 })).documents.map((d) => d.id)).toContain(privateId);
      const { document } = await admin.updateDocument({
        document: { id: privateId, journal: "Edited by admin" },
        updateMask: create(FieldMaskSchema, { paths: ["journal"] }),
      });
      expect(document!.journal).toBe("Edited by admin");
      const doomed = (await client.createDocument({ document: base })).document!.id;
      await admin.deleteDocument({ id: doomed });
      expect((await rejection(client.getDocument({ id: doomed }))).code).toBe(Code.NotFound);
    });

    it("a student may not create documents: the contract's roles decide", async () => {
      const err = await rejection((await as("student")).createDocument({ document: base }));
      expect(err.code).toBe(Code.PermissionDenied);
      expect(err.rawMessage).toMatch(/student role may not call CreateDocument/);
    });

    it("no token is unauthenticated; a malformed, tampered or foreign token is refused, never treated as anonymous", async () => {
      expect((await rejection((await as()).getDocument({ id: sharedId }))).code).toBe(Code.Unauthenticated);
      const token = await identity.token("doctor");
      const [h, p, sig] = token.split(".") as [string, string, string];
      const claims = JSON.parse(Buffer.from(p, "base64url").toString());
      const tampered = `${h}.${Buffer.from(JSON.stringify({ ...claims, role: "admin" })).toString("base64url")}.${sig}`;
      const none = `${Buffer.from(JSON.stringify({ alg: "none", typ: "JWT" })).toString("base64url")}.${p}.`;
      for (const [what, header] of [
        ["not a bearer token", `Basic ${Buffer.from("a:b").toString("base64")}`],
        ["garbage", "Bearer not.a.jwt"],
        ["tampered role", `Bearer ${tampered}`],
        ["alg none", `Bearer ${none}`],
      ] as const) {
        const err = await rejection((await as(undefined, { authorization: header })).getDocument({ id: sharedId }));
        expect(err.code, what).toBe(Code.Unauthenticated);
      }
    });

    it("a page token cannot be replayed by someone who sees less", async () => {
      const admin = await as("admin");
      const page = await admin.listDocuments({ pageSize: 1 });
      expect(page.nextPageToken).not.toBe("");
      const err = await rejection(client.listDocuments({ pageSize: 1, pageToken: page.nextPageToken }));
      expect(err.code).toBe(Code.InvalidArgument);
    });
  });

  describe("bad input gets invalid_argument, not_found or already_exists with a sentence", () => {
    const invalid = async (p: Promise<unknown>, field: RegExp) => {
      const err = await rejection(p);
      expect(err.code).toBe(Code.InvalidArgument);
      const violations = err.findDetails(BadRequestSchema).flatMap((d) => d.fieldViolations.map((v) => v.field));
      expect(violations.join(" ")).toMatch(field);
      return err;
    };

    it("empty title", () => invalid(client.createDocument({ document: { ...base, title: "" } }), /document/));
    it("blank title", () => invalid(client.createDocument({ document: { ...base, title: "   " } }), /document\.title/));
    it("title over 500 characters", () =>
      invalid(client.createDocument({ document: { ...base, title: "x".repeat(501) } }), /document\.title/));
    it("missing document", async () =>
      expect((await rejection(client.createDocument({}))).code).toBe(Code.InvalidArgument));
    it("malformed DOI", () =>
      invalid(client.createDocument({ document: { ...base, doi: "doi:10.1/x" } }), /document\.doi/));
    it("malformed PMID", () =>
      invalid(client.createDocument({ document: { ...base, pmid: "PM123" } }), /document\.pmid/));
    it("date in the wrong format", () =>
      invalid(client.createDocument({ document: { ...base, publicationDate: "2021/01/01" } }), /publication_date/));
    it("date not in the calendar", async () => {
      const err = await invalid(
        client.createDocument({ document: { ...base, publicationDate: "2023-02-29" } }),
        /publication_date/,
      );
      expect(err.rawMessage).toMatch(/not a date in the calendar/);
    });
    it("unknown enum number", () =>
      invalid(client.createDocument({ document: { ...base, documentType: 99 as DocumentType } }), /document_type/));
    it("missing document type", () =>
      invalid(client.createDocument({ document: { ...base, documentType: DocumentType.UNSPECIFIED } }), /document/));
    it("metadata key with spaces", () =>
      invalid(client.createDocument({ document: { ...base, metadata: { "bad key": "v" } } }), /metadata/));
    it("id that is not a UUID", () => invalid(client.getDocument({ id: "42; drop table document" }), /id/));
    it("page size over 100", () => invalid(client.listDocuments({ pageSize: 101 }), /page_size/));
    it("date range upside down", () =>
      invalid(
        client.listDocuments({ publishedAfter: "2021-01-01", publishedBefore: "2020-01-01" }),
        /published_after/,
      ));
    it("garbage page token", async () => {
      const err = await rejection(client.listDocuments({ pageToken: "not-a-token" }));
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.rawMessage).toMatch(/page_token/);
    });
    it("unknown id", async () => {
      const err = await rejection(client.getDocument({ id: "00000000-0000-4000-8000-000000000000" }));
      expect(err.code).toBe(Code.NotFound);
      expect(err.rawMessage).toBe("document 00000000-0000-4000-8000-000000000000 does not exist");
    });
    it("duplicate DOI, whatever its case", async () => {
      const doi = `10.5555/dup-${Date.now()}`;
      await client.createDocument({ document: { ...base, doi } });
      const err = await rejection(client.createDocument({ document: { ...base, doi: doi.toUpperCase() } }));
      expect(err.code).toBe(Code.AlreadyExists);
      expect(err.rawMessage).toMatch(/already exists/);
    });
    it("update to a DOI another document holds", async () => {
      const doi = `10.5555/taken-${Date.now()}`;
      await client.createDocument({ document: { ...base, doi } });
      const { document } = await client.createDocument({ document: base });
      const err = await rejection(
        client.updateDocument({
          document: { id: document!.id, doi },
          updateMask: create(FieldMaskSchema, { paths: ["doi"] }),
        }),
      );
      expect(err.code).toBe(Code.AlreadyExists);
    });
    it("field mask naming an unknown or output-only field", async () => {
      const { document } = await client.createDocument({ document: base });
      for (const path of ["nonsense", "processing_status", "uploaded_by", "id"]) {
        const err = await invalid(
          client.updateDocument({
            document: { id: document!.id },
            updateMask: create(FieldMaskSchema, { paths: [path] }),
          }),
          /update_mask/,
        );
        expect(err.rawMessage).toContain(path);
      }
    });
    it("empty field mask", () =>
      invalid(
        client.updateDocument({
          document: { id: "00000000-0000-4000-8000-000000000000" },
          updateMask: create(FieldMaskSchema, { paths: [] }),
        }),
        /update_mask/,
      ));
    it("update clearing the title", async () => {
      const { document } = await client.createDocument({ document: base });
      await invalid(
        client.updateDocument({
          document: { id: document!.id, title: "" },
          updateMask: create(FieldMaskSchema, { paths: ["title"] }),
        }),
        /title/,
      );
    });
    it("update of an unknown id", async () => {
      const err = await rejection(
        client.updateDocument({
          document: { id: "00000000-0000-4000-8000-000000000000", title: "x" },
          updateMask: create(FieldMaskSchema, { paths: ["title"] }),
        }),
      );
      expect(err.code).toBe(Code.NotFound);
    });
    it("SQL metacharacters are stored as text", async () => {
      const title = `Robert'); DROP TABLE document;-- "quoted" \\ %_`;
      const { document } = await client.createDocument({ document: { ...base, title, specialty: "x' OR '1'='1" } });
      expect((await client.getDocument({ id: document!.id })).document!.title).toBe(title);
      const list = await client.listDocuments({ specialty: "x' OR '1'='1", pageSize: 100 });
      expect(list.documents.map((d) => d.id)).toEqual([document!.id]);
    });
    it("keeps serving after all of the above", async () => {
      const { document } = await client.createDocument({ document: base });
      expect((await client.getDocument({ id: document!.id })).document!.id).toBe(document!.id);
    });
  });
});
