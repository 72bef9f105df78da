import { randomBytes, randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sql } from "kysely";
import { create } from "@bufbuild/protobuf";
import { createContextValues, createHandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { pg_trgm } from "@electric-sql/pglite/contrib/pg_trgm";
import { pg_textsearch } from "@electric-sql/pglite-pg_textsearch";
import { vector } from "@electric-sql/pglite-pgvector";
import { Role } from "../../gen/medmesh/access/v1/access_pb.js";
import { SearchRequestSchema, SearchService, SortOrder } from "../../gen/medmesh/search/v1/search_pb.js";
import { memoryVersionedCache } from "../../platform/cache/versioned-cache.js";
import { openServiceDatabase, type Database } from "../../platform/db/database.js";
import { principalKey } from "../../platform/grpc/interceptors/access.js";
import { logger } from "../../platform/telemetry/logger.js";
import { backends } from "../../test/support/backends.js";
import { migrations } from "./migrations/index.js";
import { BM25_INDEX, chooseRanker, type RelevanceRanker } from "./ranker.js";
import { searchService } from "./service.js";
import { IndexStore, type Filters } from "./store.js";
import type { IndexRow, SearchDB } from "./tables.js";

// A search whose words match more documents than SEARCH_EXACT_MATCH_LIMIT ranks a bounded
// candidate set and estimates its total. The limits here are tiny so that 60 documents cross them.
const LIMITS = { exactMatchLimit: 10, candidates: 20 };
const PLATFORM_DOCS = 48;
const PRIVATE_DOCS = 12;
const OWNER = "owner-b";
const SPECIALTIES = ["cardiology", "oncology", "neurology"];

const noFilters: Filters = {
  specialties: [],
  documentTypes: [],
  journals: [],
  authors: [],
  entities: [],
  publishedAfter: "",
  publishedBefore: "",
};

/** Documents whose title has the word every abstract has: spread over the storage order. */
const COHORT_TITLED = new Set([5, 17, 29, 41]);
/** Documents in a registry, most of them without a publication date. */
const REGISTRY = { from: 30, to: 48, undatedFrom: 33 };

function row(n: number, visibility: "platform" | "private"): IndexRow {
  // Every document mentions the cohort; only three mention anticoagulation.
  const rare = n < 3 ? " Anticoagulation was stopped before surgery." : "";
  const registry = n >= REGISTRY.from && n < REGISTRY.to ? " Data came from a registry." : "";
  const undated = n >= REGISTRY.undatedFrom && n < REGISTRY.to;
  return {
    document_id: randomUUID(),
    version: 1,
    title: COHORT_TITLED.has(n) ? `Cohort outcomes in study ${n}` : `Outcomes in study ${n}`,
    abstract: `A cohort of patients was followed for ${n} months.${rare}${registry} Mortality was recorded.`,
    body: "The cohort was recruited from three hospitals. ".repeat(1 + (n % 5)),
    authors: [`Author ${n % 7}`],
    entities: ["mortality"],
    keywords: [],
    journal: `Journal ${n % 4}`,
    specialty: SPECIALTIES[n % 3]!,
    document_type: "RESEARCH_PAPER",
    publication_date: undated ? null : `20${10 + (n % 15)}-0${1 + (n % 9)}-1${n % 10}`,
    visibility,
    owner: visibility === "private" ? OWNER : `owner-${n}`,
  };
}

describe.each(backends())("bounded search on $name", (backend) => {
  let database: Database<SearchDB>;
  let store: IndexStore;
  let exact: IndexStore;
  let ranker: RelevanceRanker;
  const schema = `search_bounded_${randomBytes(4).toString("hex")}`;
  const rows = [
    ...Array.from({ length: PLATFORM_DOCS }, (_, n) => row(n, "platform")),
    ...Array.from({ length: PRIVATE_DOCS }, (_, n) => row(PLATFORM_DOCS + n, "private")),
  ];
  const privateIds = new Set(rows.filter((r) => r.visibility === "private").map((r) => r.document_id));

  beforeAll(async () => {
    database = await openServiceDatabase<SearchDB>(
      "search-bounded-test",
      { DATABASE_URL: backend.env.DATABASE_URL, MEDMESH_DATA_DIR: "memory://", DB_POOL_MAX: 2 },
      schema,
      migrations,
      { pg_trgm, pg_textsearch, vector },
    );
    store = new IndexStore(database.db, schema, BM25_INDEX, false, LIMITS);
    exact = new IndexStore(database.db, schema, BM25_INDEX, false, {
      exactMatchLimit: Number.MAX_SAFE_INTEGER,
      candidates: Number.MAX_SAFE_INTEGER,
    });
    for (const r of rows) await store.upsert(database.db, r);
    ranker = await chooseRanker(database.db as never, schema, "auto", logger);
    // The estimate reads column statistics, which autovacuum may not have gathered yet.
    await sql`analyze ${sql.id(schema, "indexed_document")}`.execute(database.db);
  }, 120_000);

  afterAll(async () => {
    await sql`drop schema ${sql.id(schema)} cascade`.execute(database.db).catch(() => undefined);
    await database?.close();
  });

  const search = (s: IndexStore, tsquery: string, over: Partial<Parameters<IndexStore["search"]>[0]> = {}) =>
    s.search({
      tsquery,
      bm25Text: tsquery.replace(/'/g, ""),
      ranker,
      filters: noFilters,
      scope: { subject: "user-a", admin: false },
      limit: 10,
      offset: 0,
      ...over,
    });

  it("keeps the word indexes' GIN pending lists short, and merges what is pending when asked", async () => {
    await store.boundPendingLists();
    const options = await sql<{ name: string; reloptions: string[] | null }>`
      select c.relname as name, c.reloptions from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = ${schema} and c.relname in ('indexed_document_tsv_idx', 'indexed_document_title_tsv_idx')
      order by c.relname`.execute(database.db);
    expect(options.rows).toEqual([
      { name: "indexed_document_title_tsv_idx", reloptions: ["gin_pending_list_limit=256"] },
      { name: "indexed_document_tsv_idx", reloptions: ["gin_pending_list_limit=256"] },
    ]);
    // Searches find what was pending before the merge: all three documents that mention it.
    const found = await search(exact, "'anticoagul'");
    expect(found.total).toBe(3);
  });

  it("a word in every document ranks a candidate set, estimates the total and facets the candidates", async () => {
    const page = await search(store, "'cohort'");
    expect(page.estimated).toBe(true);
    expect(page.pageable).toBe(LIMITS.candidates);
    // An estimate, never fewer than the candidates seen.
    expect(page.total).toBeGreaterThanOrEqual(LIMITS.candidates);
    expect(page.matched).toBe(page.total);
    expect(page.hits).toHaveLength(10);
    const counted = page.facets.specialty.reduce((n, f) => n + f.count, 0);
    expect(counted).toBe(LIMITS.candidates);
    const whole = await search(exact, "'cohort'");
    expect(whole.estimated).toBe(false);
    expect(whole.total).toBe(PLATFORM_DOCS);
    expect(whole.facets.specialty.reduce((n, f) => n + f.count, 0)).toBe(PLATFORM_DOCS);
  });

  it("keeps visibility in the candidate set: others' private documents never, one's own ones yes", async () => {
    const seen: string[] = [];
    for (let offset = 0; offset < 40; offset += 10) {
      const page = await search(store, "'cohort'", { offset });
      seen.push(...page.hits.map((h) => h.document_id));
    }
    expect(seen).toHaveLength(LIMITS.candidates);
    expect(new Set(seen).size).toBe(LIMITS.candidates);
    expect(seen.filter((id) => privateIds.has(id))).toEqual([]);
    const owners = await search(store, "'cohort'", { scope: { subject: OWNER, admin: false }, limit: 50 });
    expect(owners.estimated).toBe(true);
    expect(owners.hits).toHaveLength(LIMITS.candidates);
    const admin = await search(store, "'cohort'", { scope: { subject: "admin", admin: true }, limit: 50 });
    expect(admin.hits).toHaveLength(LIMITS.candidates);
    const byOwner = await exact.search({
      tsquery: "'cohort'",
      bm25Text: "cohort",
      ranker,
      filters: noFilters,
      scope: { subject: OWNER, admin: false },
      limit: 100,
      offset: 0,
    });
    expect(byOwner.hits.filter((h) => privateIds.has(h.document_id))).toHaveLength(PRIVATE_DOCS);
  });

  it("stays exact for a word in a few documents, and when the candidates hold every match", async () => {
    const rare = await search(store, "'anticoagul'");
    expect(rare.estimated).toBe(false);
    expect(rare.total).toBe(3);
    expect(rare.facets.specialty.reduce((n, f) => n + f.count, 0)).toBe(3);
    // Filters narrow the matches below the candidate bound: the set is whole, so nothing is estimated.
    const narrow = await search(store, "'cohort'", { filters: { ...noFilters, specialties: ["oncology"] } });
    const narrowExact = await search(exact, "'cohort'", { filters: { ...noFilters, specialties: ["oncology"] } });
    expect(narrow.estimated).toBe(false);
    expect(narrow.total).toBe(narrowExact.total);
    expect(narrow.hits.map((h) => h.document_id)).toEqual(narrowExact.hits.map((h) => h.document_id));
  });

  it("takes the documents whose title matches first, wherever they are stored", async () => {
    const candidates = await search(store, "'cohort'", { limit: LIMITS.candidates });
    expect(candidates.estimated).toBe(true);
    const titled = rows.filter((_, n) => COHORT_TITLED.has(n)).map((r) => r.document_id);
    // Two of them are stored after the first 20 matches: storage order alone would miss them.
    expect(candidates.hits.map((h) => h.document_id)).toEqual(expect.arrayContaining(titled));
  });

  it("sorted by date, the candidates are the newest matches", async () => {
    const page = await search(store, "'cohort'", { ranker: "date" });
    const whole = await search(exact, "'cohort'", { ranker: "date" });
    expect(page.estimated).toBe(true);
    expect(page.hits.map((h) => h.document_id)).toEqual(whole.hits.map((h) => h.document_id));
    // Matches without a date come after every dated one: when the newest window holds fewer
    // than the bound, the rest fill it in date order, undated last.
    const all = { scope: { subject: "admin", admin: true }, limit: 50, ranker: "date" as const };
    const registry = await search(store, "'registry'", all);
    const registryWhole = await search(exact, "'registry'", all);
    expect(registry.hits.map((h) => h.document_id)).toEqual(registryWhole.hits.map((h) => h.document_id));
    expect(registry.hits.at(-1)!.publication_date).toBeNull();
  });

  it("answers total_is_estimate, ends pages with the candidates and caches the answer as it is", async () => {
    const service = searchService({
      store,
      ranker,
      reindexer: undefined as never,
      db: database.db,
      cache: { store: memoryVersionedCache(), ttlMs: 60_000, namespace: `test:${schema}` },
    }) as Required<ServiceImpl<typeof SearchService>>;
    const ctx = () =>
      createHandlerContext({
        service: SearchService,
        method: SearchService.method.search,
        protocolName: "test",
        requestMethod: "POST",
        url: "/medmesh.search.v1.SearchService/Search",
        contextValues: createContextValues().set(principalKey, { subject: "user-a", role: Role.DOCTOR, kind: "user" }),
      });
    const first = await service.search(create(SearchRequestSchema, { query: "cohort", pageSize: 10 }), ctx());
    expect(first.totalIsEstimate).toBe(true);
    expect(first.nextPageToken).not.toBe("");
    const second = await service.search(
      create(SearchRequestSchema, { query: "cohort", pageSize: 10, pageToken: first.nextPageToken }),
      ctx(),
    );
    expect(second.hits).toHaveLength(10);
    // The candidate set is used up: no token leads past it.
    expect(second.nextPageToken).toBe("");
    const again = await service.search(create(SearchRequestSchema, { query: "cohort", pageSize: 10 }), ctx());
    expect(again.cached).toBe(true);
    expect(again.totalIsEstimate).toBe(true);
    const rare = await service.search(create(SearchRequestSchema, { query: "anticoagulation", pageSize: 10 }), ctx());
    expect(rare.totalIsEstimate).toBe(false);
    expect(rare.totalCount).toBe(3n);
    const byDate = await service.search(
      create(SearchRequestSchema, { query: "cohort", pageSize: 10, sort: SortOrder.DATE }),
      ctx(),
    );
    expect(byDate.totalIsEstimate).toBe(true);
  });
});
