/**
 * The search index on its own: `npm run bench:search` (node --import tsx bench/search.ts).
 * Generates BENCH_SEARCH_DOCS (10000) synthetic abstracts and indexes them through the indexer's
 * write path as the consumer runs it (BENCH_SEARCH_BATCH events per transaction, default 32, each
 * with its inbox row, its index row with the vector where the index keeps vectors, and its
 * DocumentIndexed in the outbox; vectors by one embedder call per batch): index throughput. Then
 * times Search's one statement (match, total, six facets, a page of 10 with headlines) for a
 * rare, a medium and a common term and two common terms, with each ranker the database has (and
 * fused with the vector leg where there is one); and the Search handler for the common-term
 * queries, uncached and answered from the cache (in process, and Redis when REDIS_URL is set).
 * Embedded PGlite by default (in this process, as search runs it), the server when DATABASE_URL
 * is set. Writes bench/results/search[-postgres][-<n>k].md (no size suffix at 10k). Run it under
 * `flock /tmp/bench.lock`.
 */
import fs from "node:fs";
import path from "node:path";
import { randomBytes, randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import { sql } from "kysely";
import { pg_trgm } from "@electric-sql/pglite/contrib/pg_trgm";
import { pg_textsearch } from "@electric-sql/pglite-pg_textsearch";
import { vector } from "@electric-sql/pglite-pgvector";
import { openServiceDatabase } from "../platform/db/database.js";
import { create } from "@bufbuild/protobuf";
import { createContextValues, createHandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { Role } from "../gen/medmesh/access/v1/access_pb.js";
import { SearchRequestSchema, SearchService } from "../gen/medmesh/search/v1/search_pb.js";
import { memoryVersionedCache, redisVersionedCache, type VersionedCache } from "../platform/cache/versioned-cache.js";
import { principalKey } from "../platform/grpc/interceptors/access.js";
import { HashingEmbedder } from "../services/search/embedding/index.js";
import { indexer } from "../services/search/indexer.js";
import { searchService } from "../services/search/service.js";
import {
  chooseVectorLeg,
  embedMany,
  embeddingText,
  vectorIndexWanted,
  type VectorIndexSetting,
} from "../services/search/vectors.js";
import { logger } from "../platform/telemetry/logger.js";
import { migrations } from "../services/search/migrations/index.js";
import { BM25_INDEX, chooseRanker } from "../services/search/ranker.js";
import { DEFAULT_BOUNDED_SEARCH, IndexStore, type RankerName } from "../services/search/store.js";
import type { IndexRow, SearchDB } from "../services/search/tables.js";
import { intFromEnv } from "./lib/env.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const DOCS = intFromEnv("BENCH_SEARCH_DOCS", 10_000, 100, 1_000_000);
const RUNS = intFromEnv("BENCH_SEARCH_RUNS", 30, 1, 10_000);
const BATCH = intFromEnv("BENCH_SEARCH_BATCH", 32, 1, 1000);

/** A small deterministic PRNG, so every run indexes the same corpus. */
function prng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const filler = (
  "the of and in to with for was were a on by from at as that this is be are we our study results " +
  "outcome group groups trial cohort analysis risk ratio years compared associated higher lower " +
  "significant increase decrease treatment therapy clinical dose week month baseline follow-up " +
  "participants adults children women men hospital primary secondary endpoint randomised controlled"
).split(" ");
const topics = (
  "hypertension diabetes asthma sepsis stroke migraine arthritis obesity anaemia pneumonia " +
  "influenza depression anxiety epilepsy psoriasis lupus glaucoma cirrhosis hepatitis tuberculosis " +
  "aspirin statin insulin warfarin heparin amoxicillin ibuprofen prednisone lisinopril atorvastatin"
).split(" ");
const specialties = ["cardiology", "endocrinology", "neurology", "pulmonology", "oncology", "rheumatology"];
const journals = ["The Lancet", "BMJ", "JAMA", "NEJM", "Diabetes Care", "Thorax", "Brain", "Gut"];

function corpus(n: number): IndexRow[] {
  const rnd = prng(42);
  const pick = <T>(a: T[]) => a[Math.floor(rnd() * a.length)]!;
  const rows: IndexRow[] = [];
  for (let i = 0; i < n; i++) {
    const words: string[] = [];
    for (let w = 0; w < 150; w++) words.push(rnd() < 0.15 ? pick(topics) : pick(filler));
    // "patients" in 40% of abstracts, "metformin" in 5%, "zolmitriptan" in 0.5%.
    if (rnd() < 0.4) words.splice(Math.floor(rnd() * words.length), 0, "patients");
    if (rnd() < 0.05) words.splice(Math.floor(rnd() * words.length), 0, "metformin");
    if (rnd() < 0.005) words.splice(Math.floor(rnd() * words.length), 0, "zolmitriptan");
    const year = 2000 + Math.floor(rnd() * 25);
    rows.push({
      document_id: `00000000-0000-4000-8000-${i.toString(16).padStart(12, "0")}`,
      version: 1,
      title: `${pick(topics)} and ${pick(topics)} in ${pick(filler)} ${pick(filler)}`,
      abstract: words.join(" "),
      body: "",
      authors: [`Author ${Math.floor(rnd() * 500)}`],
      entities: [pick(topics), pick(topics)],
      keywords: [pick(topics)],
      journal: pick(journals),
      specialty: pick(specialties),
      document_type: "research_paper",
      publication_date: `${year}-0${1 + Math.floor(rnd() * 9)}-1${Math.floor(rnd() * 9)}`,
      visibility: rnd() < 0.9 ? "platform" : "private",
      owner: `user-${Math.floor(rnd() * 100)}`,
    });
  }
  return rows;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const ms = (x: number) => (x < 10 ? x.toFixed(2) : x.toFixed(1));

async function main() {
  const url = process.env.DATABASE_URL;
  // BENCH_SEARCH_SCHEMA keeps the index in that schema and reuses it when it already holds the
  // corpus, so a 100k corpus is built once while the query shapes are measured again and again.
  const kept = process.env.BENCH_SEARCH_SCHEMA;
  const schema = kept || `search_bench_${randomBytes(3).toString("hex")}`;
  const database = await openServiceDatabase<SearchDB>(
    "search-bench",
    { DATABASE_URL: url, MEDMESH_DATA_DIR: "memory://", DB_POOL_MAX: 4 },
    schema,
    migrations,
    { pg_trgm, pg_textsearch, vector },
  );
  const db = database.db;
  // BENCH_SEARCH_VECTORS=0 indexes without vectors: PGlite indexes 100k documents several times
  // faster without the HNSW index, when only the lexical shapes are measured.
  const vectors =
    process.env.BENCH_SEARCH_VECTORS === "0"
      ? undefined
      : await chooseVectorLeg(
          db as never,
          schema,
          new HashingEmbedder(),
          logger,
          undefined,
          // As search decides it (SEARCH_VECTOR_INDEX, default auto: none on PGlite, HNSW on a server).
          vectorIndexWanted((process.env.SEARCH_VECTOR_INDEX ?? "auto") as VectorIndexSetting, Boolean(url), false),
        );
  const bounded = {
    exactMatchLimit: intFromEnv("SEARCH_EXACT_MATCH_LIMIT", DEFAULT_BOUNDED_SEARCH.exactMatchLimit, 1, 100_000_000),
    candidates: intFromEnv("SEARCH_CANDIDATES", DEFAULT_BOUNDED_SEARCH.candidates, 10, 1_000_000),
  };
  const store = new IndexStore(db, schema, BM25_INDEX, vectors !== undefined, bounded, vectors?.indexed ?? true);
  // As search does at start: a short GIN pending list, so what indexing leaves there costs searches little.
  await store.boundPendingLists();
  // Every match ranked, counted and faceted whatever their number: the shape before bounding.
  const exactStore = new IndexStore(db, schema, BM25_INDEX, vectors !== undefined, {
    exactMatchLimit: Number.MAX_SAFE_INTEGER,
    candidates: Number.MAX_SAFE_INTEGER,
  });
  // Only the write path is used: documents and the service token are never called.
  const indexing = indexer({ documents: undefined as never, token: undefined as never, store, vectors });
  const rssBefore = process.memoryUsage().rss;
  const present = Number(
    (
      await db
        .selectFrom("indexed_document")
        .select((eb) => eb.fn.countAll().as("n"))
        .executeTakeFirstOrThrow()
    ).n,
  );
  const reused = kept !== undefined && kept !== "" && present >= DOCS;
  const rows = reused ? [] : corpus(DOCS);
  // As search starts: the BM25 index (where the server has pg_textsearch) exists before the first
  // document, so indexing pays for keeping it, as the service does.
  const best = await chooseRanker(db as never, schema, "auto", logger);
  const indexStart = performance.now();
  // The embedded database runs in this process: its CPU time is the cost of indexing whatever
  // else the shared machine is doing, where wall-clock throughput follows the load.
  const indexCpuStart = process.cpuUsage();
  let lastReport = indexStart;
  for (let i = 0; i < rows.length; i += BATCH) {
    const batch = rows.slice(i, i + BATCH);
    const embeddings = vectors
      ? await embedMany(
          vectors.embedder,
          batch.map((r) => embeddingText(r)),
        )
      : [];
    await db.transaction().execute(async (trx) => {
      for (const [n, row] of batch.entries()) {
        await trx.insertInto("inbox").values({ group_id: "search-indexer", event_id: randomUUID() }).execute();
        const embedding = embeddings[n];
        await indexing.apply(trx, { kind: "upsert", row, ...(embedding === undefined ? {} : { embedding }) });
      }
    });
    if (performance.now() - lastReport > 30_000) {
      lastReport = performance.now();
      const done = i + batch.length;
      console.error(`bench: indexed ${done}/${DOCS}, ${(done / ((lastReport - indexStart) / 1000)).toFixed(0)}/s`);
    }
  }
  const indexSeconds = (performance.now() - indexStart) / 1000;
  const indexCpu = process.cpuUsage(indexCpuStart);
  const indexCpuSeconds = (indexCpu.user + indexCpu.system) / 1e6;
  const rssIndexed = process.memoryUsage().rss;
  // The estimate reads the column statistics; a server's autovacuum keeps them, PGlite has none.
  await sql`analyze ${sql.id(schema, "indexed_document")}`.execute(db);
  const rankers: RankerName[] = best === "bm25" ? ["bm25", "ts_rank_cd"] : ["ts_rank_cd"];
  const embedQuery = async (text: string) => (vectors ? (await embedMany(vectors.embedder, [text]))[0] : undefined);

  const queries: Array<[string, string, string]> = [
    ["rare term", "'zolmitriptan'", "zolmitriptan"],
    ["medium term", "'metformin'", "metformin"],
    ["common term (40%)", "'patients'", "patients"],
    ["two common terms", "'patients' & 'treatment'", "patients treatment"],
    // In ~55% of the documents and in the titles of ~7%: the bounded shape takes title matches first.
    ["common term, 7% of titles", "'hypertension'", "hypertension"],
  ];
  const noFilters = {
    specialties: [],
    documentTypes: [],
    journals: [],
    authors: [],
    entities: [],
    publishedAfter: "",
    publishedBefore: "",
  };
  const lines: string[] = [];
  const shapes: Array<[string, IndexStore]> = [
    ["every match", exactStore],
    ["by estimate", store],
  ];
  // Date order for the common term (one ordering, whatever the ranker); every other row ranks.
  const runs: Array<[RankerName, boolean, Array<[string, string, string]>]> = [];
  for (const ranker of rankers)
    for (const withVector of vectors ? [false, true] : [false]) runs.push([ranker, withVector, queries]);
  runs.push(["date", false, queries.filter(([label]) => label.startsWith("common term"))]);
  for (const [ranker, withVector, runQueries] of runs) {
    for (const [label, tsquery, bm25Text] of runQueries) {
      // The exact shape's top 10: how many of them the bounded shape's top 10 also has.
      let exactTop: string[] = [];
      for (const [shape, shapeStore] of shapes) {
        const vector = withVector ? await embedQuery(bm25Text) : undefined;
        const times: number[] = [];
        let total = 0;
        let estimated = false;
        let top: string[] = [];
        for (let i = 0; i < RUNS + 3; i++) {
          const t = performance.now();
          const page = await shapeStore.search({
            tsquery,
            bm25Text,
            ranker,
            filters: noFilters,
            scope: { subject: "user-1", admin: false },
            limit: 10,
            offset: 0,
            ...(vector ? { vector } : {}),
          });
          if (i >= 3) times.push(performance.now() - t);
          total = page.total;
          estimated = page.estimated;
          top = page.hits.map((h) => h.document_id);
        }
        if (shapeStore === exactStore) exactTop = top;
        const shared = top.filter((id) => exactTop.includes(id)).length;
        const name = withVector ? `${ranker} + vector (RRF)` : ranker;
        const matches = estimated ? `~${total} (estimate; ${bounded.candidates} ranked)` : `${total}`;
        lines.push(
          `| ${name} | ${shape} | ${label} | ${matches} | ${ms(pct(times, 50))} | ${ms(pct(times, 95))} | ${shared}/10 |`,
        );
      }
    }
  }

  // The Search handler itself (query understanding, the statement, the answer's encoding) for
  // the common-term queries: without a cache, and answered from one.
  const handlerLines: string[] = [];
  const caches: Array<[string, VersionedCache | undefined, IndexStore?]> = [
    ["uncached, every match", undefined, exactStore],
    ["uncached", undefined],
    ["cached, in process", memoryVersionedCache()],
  ];
  if (process.env.REDIS_URL) caches.push(["cached, Redis", redisVersionedCache(process.env.REDIS_URL)]);
  const ctx = () =>
    createHandlerContext({
      service: SearchService,
      method: SearchService.method.search,
      protocolName: "bench",
      requestMethod: "POST",
      url: "/medmesh.search.v1.SearchService/Search",
      contextValues: createContextValues().set(principalKey, { subject: "user-1", role: Role.DOCTOR, kind: "user" }),
    });
  for (const [label, cache, handlerStore] of caches) {
    const service = searchService({
      store: handlerStore ?? store,
      ranker: best,
      ...(vectors ? { vectors } : {}),
      reindexer: undefined as never,
      db,
      ...(cache ? { cache: { store: cache, ttlMs: 600_000, namespace: `bench:${schema}` } } : {}),
    }) as Required<ServiceImpl<typeof SearchService>>;
    for (const query of ["patients", "patients treatment", "hypertension"]) {
      const times: number[] = [];
      for (let i = 0; i < RUNS + 3; i++) {
        const t = performance.now();
        const res = await service.search(create(SearchRequestSchema, { query, pageSize: 10 }), ctx());
        if (i >= 3) times.push(performance.now() - t);
        if (i >= 3 && cache && !res.cached) throw new Error(`"${query}" was not answered from the cache`);
      }
      handlerLines.push(`| ${label} | ${query} | ${ms(pct(times, 50))} | ${ms(pct(times, 95))} |`);
    }
    await cache?.close();
  }

  // SimilarDocuments for documents of the corpus: more-like-this fused with the vector leg, which
  // walks the HNSW index where there is one and ranks bounded candidates exactly where not.
  const similarTimes: number[] = [];
  for (let i = 0; i < RUNS + 3; i++) {
    const id = `00000000-0000-4000-8000-${(i * 97).toString(16).padStart(12, "0")}`;
    const t = performance.now();
    const found = await store.similar(id, { subject: "user-1", admin: true }, 10);
    if (i >= 3) similarTimes.push(performance.now() - t);
    if (!found || found.hits.length === 0) throw new Error(`SimilarDocuments found nothing for ${id}`);
  }
  const similarLine = `SimilarDocuments (${vectors ? (vectors.indexed ? "vector leg through HNSW" : "vector leg over bounded candidates, no vector index") : "no vector leg"}), ${RUNS} documents: p50 ${ms(pct(similarTimes, 50))} ms, p95 ${ms(pct(similarTimes, 95))} ms`;

  const rss = process.memoryUsage().rss;
  const where = url ? "PostgreSQL server (DATABASE_URL)" : "embedded PGlite in this process";
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  const out = [
    `# Search index bench (${new Date().toISOString().slice(0, 10)}), ${DOCS} documents`,
    "",
    `\`BENCH_SEARCH_DOCS=${DOCS} npm run bench:search\`, ${DOCS} synthetic abstracts (~150 words), ${where}; ${RUNS} runs per query after 3 warm-ups.`,
    "Each statement row is Search's one statement: match, total, six facets over the matched set, a page of 10 with ts_headline.",
    "",
    reused
      ? `- Index reused from schema ${schema} (built by an earlier run; indexing not measured)`
      : `- Indexing through the indexer's write path, ${BATCH} events per transaction (inbox row, index row${vectors ? ` with its vector (hashing embedder, ${vectors.indexed ? "HNSW" : "no vector index"})` : ""}, DocumentIndexed in the outbox): ${(DOCS / indexSeconds).toFixed(0)} documents/s (${indexSeconds.toFixed(1)} s)${url ? "" : `; ${(DOCS / indexCpuSeconds).toFixed(0)} documents per CPU second of this process (${indexCpuSeconds.toFixed(1)} s: the measure that does not follow the shared machine's load)`}`,
    `- Ranker chosen at start: ${best}${best === "bm25" ? " (the BM25 index kept up while indexing)" : ""}; vector leg: ${vectors ? "yes" : process.env.BENCH_SEARCH_VECTORS === "0" ? "no (BENCH_SEARCH_VECTORS=0)" : "no (no pgvector)"}`,
    url
      ? ""
      : `- Process RSS (the embedded database lives in it): ${mib(rssBefore)} before loading, ${mib(rssIndexed)} after indexing, ${mib(rss)} at the end`,
    "",
    `Shape: "every match" ranks, counts and facets all matches (before bounding); "by estimate" is Search's shape: above ${bounded.exactMatchLimit} estimated matches (SEARCH_EXACT_MATCH_LIMIT) it ranks and facets ${bounded.candidates} candidates (SEARCH_CANDIDATES) and estimates the total.`,
    "",
    "\"top 10\": how many of the every-match shape's first 10 results the row's first 10 also has (the bounded shape ranks a sample).",
    "",
    "| ranker | shape | query | matches | p50 ms | p95 ms | top 10 |",
    "|---|---|---|---:|---:|---:|---:|",
    ...lines,
    "",
    "Through the Search handler (query understanding, statement, answer), common-term queries:",
    "",
    "| answer | query | p50 ms | p95 ms |",
    "|---|---|---:|---:|",
    ...handlerLines,
    "",
    similarLine,
    "",
  ].join("\n");
  process.stdout.write(out);
  const size = DOCS === 10_000 ? "" : `-${DOCS >= 1000 ? `${Math.round(DOCS / 1000)}k` : DOCS}`;
  const file = path.join(root, "bench/results", `search${url ? "-postgres" : ""}${size}.md`);
  fs.writeFileSync(file, out);
  if (!kept) await sql`drop schema ${sql.id(schema)} cascade`.execute(db).catch(() => undefined);
  await database.close();
}

await main();
