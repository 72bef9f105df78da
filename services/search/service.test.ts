import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { randomBytes, randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { startBroker } from "../../deploy/embedded/kafka/index.js";
import {
  DocumentType,
  ProcessingStatus,
  Visibility,
  type UploadRequest,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import { Ranker, SearchService, SortOrder } from "../../gen/medmesh/search/v1/search_pb.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { backends, testEnv } from "../../test/support/backends.js";
import { personaClients, type DocumentsClient } from "../../test/support/documents.js";
import { startTestIdentity, type Persona, type TestIdentity } from "../../test/support/identity.js";
import { rejection } from "../../test/support/rejection.js";
import { startDocuments } from "../documents/main.js";
import { startProcessing } from "../processing/main.js";
import { startSearch } from "./main.js";
import { eventually } from "../../test/support/eventually.js";

type SearchClient = ReturnType<typeof createMeshClient<typeof SearchService>>;

/** A plain-text paper: a title line, an abstract, a body. */
function paper(title: string, abstract: string, body: string): Buffer {
  return Buffer.from(`${title}\n\nAbstract\n${abstract}\n\nIntroduction\n${body}\n`);
}

async function* uploadText(
  title: string,
  bytes: Buffer,
  document: Record<string, unknown> = {},
  documentId?: string,
): AsyncIterable<UploadRequest> {
  const header = documentId
    ? { documentId, filename: "paper.txt" }
    : {
        document: { title, documentType: DocumentType.RESEARCH_PAPER, ...document },
        filename: "paper.txt",
      };
  yield { part: { case: "header", value: header } } as never;
  yield { part: { case: "chunk", value: bytes } } as never;
}

describe.each(backends())("search on $name", (backend) => {
  const blobDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-search-test-"));
  const processingKey = `mmk_${randomBytes(32).toString("base64url")}`;
  const searchKey = `mmk_${randomBytes(32).toString("base64url")}`;
  const suffix = randomBytes(4).toString("hex");
  const stops: Array<() => Promise<void>> = [];
  const searchClients: SearchClient[] = [];
  let identity: TestIdentity;
  let docsAddress: string;
  let searchAddress: string;
  let ranker: string;
  let vectorLeg: boolean;
  const docs = personaClients(
    () => identity,
    () => docsAddress,
  );
  const searchAs = async (who: Persona): Promise<SearchClient> => {
    const c = createMeshClient(SearchService, searchAddress, {
      headers: await identity.bearer(who),
      defaultTimeoutMs: 20_000,
    });
    searchClients.push(c);
    return c;
  };
  let doctor: DocumentsClient;
  let doctor2: DocumentsClient;
  let s: Record<"doctor" | "doctor2" | "admin" | "student", SearchClient>;
  // Words no other document in a shared database has, so counts are exact.
  const tag = `zq${suffix}`;

  beforeAll(async () => {
    const broker = await startBroker({ port: 0, dataDir: null, logLevel: "silent" });
    stops.unshift(() => broker.stop());
    identity = await startTestIdentity({
      IDENTITY_BOOTSTRAP_API_KEYS: `processing=${processingKey},search=${searchKey}`,
    });
    stops.unshift(() => identity.stop());
    const own = backend.env.DATABASE_URL
      ? { DATABASE_URL: backend.env.DATABASE_URL }
      : { MEDMESH_DATA_DIR: "memory://" };
    const documents = await startDocuments({
      ...testEnv,
      ...backend.env,
      IDENTITY_TARGET: identity.target,
      KAFKA_BROKERS: broker.address,
      BLOB_DIR: blobDir,
    });
    stops.unshift(documents.stop);
    docsAddress = `127.0.0.1:${documents.port}`;
    const worker = await startProcessing({
      ...testEnv,
      ...own,
      PROCESSING_DB_SCHEMA: `processing_s${suffix}`,
      PROCESSING_PORT: "0",
      PROCESSING_CONCURRENCY: "1",
      KAFKA_BROKERS: broker.address,
      DOCUMENTS_TARGET: docsAddress,
      IDENTITY_TARGET: identity.target,
      PROCESSING_API_KEY: processingKey,
    });
    stops.unshift(worker.stop);
    const search = await startSearch({
      ...testEnv,
      ...own,
      SEARCH_DB_SCHEMA: `search_t${suffix}`,
      SEARCH_PORT: "0",
      KAFKA_BROKERS: broker.address,
      DOCUMENTS_TARGET: docsAddress,
      IDENTITY_TARGET: identity.target,
      SEARCH_API_KEY: searchKey,
      SEARCH_RETRY_BASE_MS: "50",
    });
    stops.unshift(search.stop);
    searchAddress = `127.0.0.1:${search.port}`;
    ranker = search.ranker;
    vectorLeg = search.vectorLeg;
    doctor = await docs.as("doctor");
    doctor2 = await docs.as("doctor2");
    s = {
      doctor: await searchAs("doctor"),
      doctor2: await searchAs("doctor2"),
      admin: await searchAs("admin"),
      student: await searchAs("student"),
    };
  }, 120_000);

  afterAll(async () => {
    docs.closeAll();
    for (const c of searchClients) c.close();
    for (const stop of stops) await stop();
    rmSync(blobDir, { recursive: true, force: true });
  });

  async function publish(
    client: DocumentsClient,
    title: string,
    abstract: string,
    body: string,
    document: Record<string, unknown> = {},
  ): Promise<string> {
    const res = await client.upload(
      uploadText(title, paper(title, abstract, body), { visibility: Visibility.PLATFORM, ...document }),
    );
    const id = res.document!.id;
    await indexed(client, id, res.version!.version);
    return id;
  }

  async function indexed(client: DocumentsClient, id: string, version: number): Promise<void> {
    await eventually(`${id} v${version} indexed`, async () => {
      const { document } = await client.getDocument({ id });
      if (document!.processingStatus === ProcessingStatus.FAILED) throw new Error(`${id} failed processing`);
      return document!.version === version && document!.processingStatus === ProcessingStatus.INDEXED
        ? true
        : undefined;
    });
  }

  it("ranks with BM25 on the embedded database and says so; ts_rank_cd on PostgreSQL 15", () => {
    expect(ranker).toBe(backend.name === "pglite" ? "bm25" : "ts_rank_cd");
  });

  it("indexes an uploaded document, moves it to INDEXED and finds it with highlights and facets", async () => {
    const id = await publish(
      doctor,
      `Metformin and lactic acidosis ${tag}`,
      `We reviewed metformin use in patients with type 2 diabetes and chronic kidney disease ${tag}.`,
      "Lactic acidosis was rare. Renal function should guide the dose.",
      { journal: "Diabetes Care", authors: ["Ada Byron"], specialty: "Endocrinology", publicationDate: "2020-05-01" },
    );
    const res = await s.doctor2.search({ query: `metformin ${tag}` });
    expect(res.totalCount).toBe(1n);
    expect(res.ranker).toBe(ranker === "bm25" ? Ranker.BM25 : Ranker.TS_RANK_CD);
    const hit = res.hits[0]!;
    expect(hit).toMatchObject({
      documentId: id,
      title: `Metformin and lactic acidosis ${tag}`,
      journal: "Diabetes Care",
      authors: ["Ada Byron"],
      specialty: "Endocrinology",
      publicationDate: "2020-05-01",
      documentType: DocumentType.RESEARCH_PAPER,
      visibility: Visibility.PLATFORM,
    });
    expect(hit.score).toBeGreaterThan(0);
    const marked = hit.snippet!.highlights.map((h) => [...hit.snippet!.text].slice(h.start, h.end).join(""));
    expect(marked.map((m) => m.toLowerCase())).toContain("metformin");
    const facet = (f: string) => res.facets.find((x) => x.field === f)!.values.map((v) => [v.value, Number(v.count)]);
    expect(facet("journal")).toEqual([["Diabetes Care", 1]]);
    expect(facet("author")).toEqual([["Ada Byron", 1]]);
    expect(facet("publication_year")).toEqual([["2020", 1]]);
    expect(res.interpretation!.normalized).toBe(`metformin ${tag}`);
  });

  it("keeps private documents to their owner and admins, counts and facets included", async () => {
    const secret = `zs${suffix}`;
    const id = await publish(doctor, `Private cohort ${secret}`, `Unpublished ${secret} data on sepsis.`, "Body.", {
      visibility: Visibility.PRIVATE,
      journal: `Secret Journal ${secret}`,
      authors: [`Quillon Privatus ${secret}`],
    });
    const mine = await s.doctor.search({ query: secret });
    expect(mine.hits.map((h) => h.documentId)).toEqual([id]);
    // The owner found their own paper: its words are known to them, however close another word is.
    expect(mine.didYouMean).toEqual([]);
    // The private document's author is suggested to its owner only.
    const authorOf = async (client: typeof s.doctor) =>
      (await client.suggest({ prefix: "quillon privat" })).suggestions.filter(
        (x) => x.kind === "author" && x.text === `Quillon Privatus ${secret}`,
      ).length;
    expect(await authorOf(s.doctor)).toBe(1);
    expect(await authorOf(s.doctor2)).toBe(0);
    expect(await authorOf(s.student)).toBe(0);
    const admin = await s.admin.search({ query: secret });
    expect(admin.hits.map((h) => h.documentId)).toEqual([id]);
    for (const other of [s.doctor2, s.student]) {
      const res = await other.search({ query: secret, filters: { journals: [`Secret Journal ${secret}`] } });
      expect(res.totalCount).toBe(0n);
      expect(res.hits).toEqual([]);
      expect(res.facets.every((f) => f.values.length === 0)).toBe(true);
      await expect(rejection(other.similarDocuments({ documentId: id }))).resolves.toMatchObject({
        code: Code.NotFound,
      });
    }
  });

  it("matches phrases, OR and exclusions through the tsvector", async () => {
    const t = `zp${suffix}`;
    const a = await publish(doctor, `Green tea drinkers ${t}`, `Green tea and sleep ${t}.`, "x");
    const b = await publish(doctor, `Tea grown green ${t}`, `Tea leaves stay green ${t} when dried.`, "y");
    const ids = async (query: string) => (await s.doctor.search({ query })).hits.map((h) => h.documentId).sort();
    expect(await ids(`"green tea" ${t}`)).toEqual([a]);
    expect(await ids(`green tea ${t}`)).toEqual([a, b].sort());
    expect(await ids(`tea ${t} -leaves`)).toEqual([a]);
    expect(await ids(`(sleep OR dried) ${t}`)).toEqual([a, b].sort());
    expect(await ids(`sleep dried ${t}`)).toEqual([]);
  });

  it("filters by specialty, type, author, date and entity; unknown values give empty facets", async () => {
    const t = `zf${suffix}`;
    const a = await publish(doctor, `Aspirin in stroke ${t}`, `Aspirin after ischemic stroke ${t}.`, "z", {
      specialty: "Neurology",
      authors: ["Grace Hopper"],
      publicationDate: "2019-01-10",
    });
    await publish(doctor, `Aspirin in asthma ${t}`, `Aspirin sensitivity in asthma ${t}.`, "w", {
      specialty: "Pulmonology",
      authors: ["Alan Turing"],
      publicationDate: "2022-03-04",
    });
    const only = async (filters: Record<string, unknown>) =>
      (await s.doctor.search({ query: `aspirin ${t}`, filters })).hits.map((h) => h.documentId);
    expect(await only({ specialties: ["Neurology"] })).toEqual([a]);
    expect(await only({ authors: ["Grace Hopper"] })).toEqual([a]);
    expect(await only({ publishedBefore: "2020-12-31" })).toEqual([a]);
    expect(await only({ documentTypes: [DocumentType.REVIEW] })).toEqual([]);
    const unknown = await s.doctor.search({ query: `aspirin ${t}`, filters: { specialties: ["No Such Specialty"] } });
    expect(unknown.totalCount).toBe(0n);
    expect(unknown.facets.every((f) => f.values.length === 0)).toBe(true);
    const all = await s.doctor.search({ query: `aspirin ${t}`, sort: SortOrder.DATE });
    expect(all.ranker).toBe(Ranker.DATE);
    expect(all.hits.map((h) => h.publicationDate)).toEqual(["2022-03-04", "2019-01-10"]);
    const specialties = all.facets
      .find((f) => f.field === "specialty")!
      .values.map((v) => v.value)
      .sort();
    expect(specialties).toEqual(["Neurology", "Pulmonology"]);
  });

  it("pages with tokens bound to the query, filters and caller", async () => {
    const t = `zg${suffix}`;
    for (let i = 0; i < 3; i++) await publish(doctor, `Paging study ${i} ${t}`, `Paging ${t} number ${i}.`, "b");
    const first = await s.doctor.search({ query: `paging ${t}`, pageSize: 2 });
    expect(first.totalCount).toBe(3n);
    expect(first.hits).toHaveLength(2);
    const second = await s.doctor.search({ query: `paging ${t}`, pageSize: 2, pageToken: first.nextPageToken });
    expect(second.hits).toHaveLength(1);
    expect(second.nextPageToken).toBe("");
    const seen = new Set([...first.hits, ...second.hits].map((h) => h.documentId));
    expect(seen.size).toBe(3);
    const refused = [
      s.doctor.search({ query: `other ${t}`, pageToken: first.nextPageToken }),
      s.doctor.search({ query: `paging ${t}`, filters: { specialties: ["x"] }, pageToken: first.nextPageToken }),
      s.doctor2.search({ query: `paging ${t}`, pageSize: 2, pageToken: first.nextPageToken }),
      s.doctor.search({ query: `paging ${t}`, pageToken: "garbage" }),
    ];
    for (const call of refused) await expect(rejection(call)).resolves.toMatchObject({ code: Code.InvalidArgument });
  });

  it("says what it searched: MI expanded to its names and found in a paper that only says heart attack; quotes are not expanded", async () => {
    const t = `zm${suffix}`;
    const lay = await publish(
      doctor,
      `Heart attack survivors ${t}`,
      `Survivors of a heart attack ${t} walked more.`,
      "h",
    );
    const res = await s.doctor2.search({ query: `MI ${t}` });
    expect(res.interpretation!.expansions).toEqual([
      expect.objectContaining({
        term: "mi",
        expandedTo: expect.arrayContaining(["myocardial infarction", "heart attack"]),
      }),
    ]);
    expect(res.hits.map((h) => h.documentId)).toEqual([lay]);
    const quoted = await s.doctor2.search({ query: `"heart attack" ${t}` });
    expect(quoted.interpretation!.expansions).toEqual([]);
    expect(quoted.interpretation!.phrases).toEqual(["heart attack"]);
    expect(quoted.hits.map((h) => h.documentId)).toEqual([lay]);
  });

  it("fuses the vector leg where pgvector is (embedded), says so, and never with date order", async () => {
    expect(vectorLeg).toBe(backend.name === "pglite");
    const res = await s.doctor.search({ query: `metformin ${tag}` });
    expect(res.vectorLeg).toBe(vectorLeg);
    expect(res.totalCount).toBe(1n);
    expect((await s.doctor.search({ query: `metformin ${tag}`, sort: SortOrder.DATE })).vectorLeg).toBe(false);
  });

  it("refuses empty, overlong and broken queries with a sentence; tsquery symbols are only text", async () => {
    for (const query of ["", "x".repeat(501), 'unbalanced "quote', "& | ! : * ( )", "-only"]) {
      const err = await rejection(s.doctor.search({ query }));
      expect(err.code, query).toBe(Code.InvalidArgument);
      expect(err.rawMessage.length).toBeGreaterThan(10);
    }
    for (const query of ["heart & attack", "a:* | b", "!!x", "(((", "it's \\ fine", "'; drop table x; --", "x <-> y"]) {
      const res = await s.doctor.search({ query: `${query} ${tag}` });
      expect(res.totalCount >= 0n, query).toBe(true);
    }
  });

  it("follows a new version, a visibility change and a deletion", async () => {
    const t = `zv${suffix}`;
    const id = await publish(doctor, `Versioned ${t}`, `Original about influenza ${t}.`, "v1");
    expect((await s.doctor2.search({ query: `influenza ${t}` })).totalCount).toBe(1n);
    const v2 = await doctor.upload(
      uploadText("", paper(`Versioned ${t}`, `Revised about measles ${t}.`, "v2"), {}, id),
    );
    await indexed(doctor, id, v2.version!.version);
    expect((await s.doctor2.search({ query: `influenza ${t}` })).totalCount).toBe(0n);
    expect((await s.doctor2.search({ query: `measles ${t}` })).hits[0]!.version).toBe(2);

    await doctor.updateDocument({
      document: { id, visibility: Visibility.PRIVATE },
      updateMask: create(FieldMaskSchema, { paths: ["visibility"] }),
    });
    await eventually("private to others", async () =>
      (await s.doctor2.search({ query: `measles ${t}` })).totalCount === 0n ? true : undefined,
    );
    expect((await s.doctor.search({ query: `measles ${t}` })).totalCount).toBe(1n);

    await doctor.deleteDocument({ id });
    await eventually("gone for the owner too", async () =>
      (await s.doctor.search({ query: `measles ${t}` })).totalCount === 0n ? true : undefined,
    );
  });

  it("suggests completions, offers did-you-mean and finds similar documents", async () => {
    const t = `zd${suffix}`;
    const a = await publish(doctor, `Myocardial infarction registry ${t}`, `Myocardial infarction in women ${t}.`, "c");
    const b = await publish(doctor, `Myocardial infarction trends ${t}`, `Infarction rates ${t} fell.`, "d");
    const sugg = await s.doctor2.suggest({ prefix: "myocardial infar" });
    expect(sugg.suggestions.some((x) => x.documentId === a || x.documentId === b)).toBe(true);
    const typo = await s.doctor2.search({ query: `myocardial infraction ${t}` });
    expect(typo.totalCount).toBe(0n);
    expect(typo.didYouMean).toContainEqual(expect.objectContaining({ word: "infraction", suggestion: "infarction" }));
    expect(typo.correctedQuery).toBe(`myocardial infarction ${t}`);
    const similar = await s.doctor2.similarDocuments({ documentId: a });
    expect(similar.hits.map((h) => h.documentId)).toContain(b);
    expect(similar.hits.map((h) => h.documentId)).not.toContain(a);
    expect(similar.vectorLeg).toBe(vectorLeg);
    await expect(rejection(s.doctor2.similarDocuments({ documentId: randomUUID() }))).resolves.toMatchObject({
      code: Code.NotFound,
    });
  });

  it("serves a repeated search from the cache until the index changes", async () => {
    const t = `zc${suffix}`;
    await publish(doctor, `Cached answer ${t}`, `Vitamin D ${t} levels.`, "e");
    const first = await s.doctor2.search({ query: `vitamin ${t}` });
    expect(first.cached).toBe(false);
    const again = await s.doctor2.search({ query: `vitamin ${t}` });
    expect(again.cached).toBe(true);
    expect(again.totalCount).toBe(1n);
    expect(again.hits.map((h) => h.documentId)).toEqual(first.hits.map((h) => h.documentId));
    // Another caller's scope is another entry: nothing private leaks through the cache.
    expect((await s.student.search({ query: `vitamin ${t}` })).cached).toBe(false);
    await publish(doctor, `Second answer ${t}`, `Vitamin D ${t} in winter.`, "f");
    const after = await s.doctor2.search({ query: `vitamin ${t}` });
    expect(after.cached).toBe(false);
    expect(after.totalCount).toBe(2n);
  });

  it("counts searches for admins: top queries and queries that found nothing", async () => {
    const t = `za${suffix}`;
    await s.doctor.search({ query: `nothing matches ${t}` });
    await s.doctor2.search({ query: `nothing matches ${t}` });
    await s.doctor.search({ query: `metformin ${tag}` });
    await expect(rejection(s.doctor.getSearchAnalytics({}))).resolves.toMatchObject({ code: Code.PermissionDenied });
    const stats = await eventually("the searches counted", async () => {
      const res = await s.admin.getSearchAnalytics({ limit: 100 });
      const zero = res.zeroResultQueries.find((q) => q.normalizedQuery === `nothing matches ${t}`);
      return zero?.count === 2n ? res : undefined;
    });
    expect(stats.topQueries.find((q) => q.normalizedQuery === `nothing matches ${t}`)?.count).toBe(2n);
    expect(stats.zeroResultQueries.map((q) => q.normalizedQuery)).not.toContain(`metformin ${tag}`);
    expect(stats.totalSearches).toBeGreaterThanOrEqual(3n);
  });

  it("reindexes from documents on an admin's request only", async () => {
    await expect(rejection(s.doctor.reindex({}))).resolves.toMatchObject({ code: Code.PermissionDenied });
    const res = await s.admin.reindex({});
    expect(res.indexed).toBeGreaterThan(0);
    expect((await s.doctor2.search({ query: `metformin ${tag}` })).totalCount).toBe(1n);
  });
});
