import { randomBytes, randomUUID } from "node:crypto";
import { pg_trgm } from "@electric-sql/pglite/contrib/pg_trgm";
import { pg_textsearch } from "@electric-sql/pglite-pg_textsearch";
import { vector } from "@electric-sql/pglite-pgvector";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openServiceDatabase, type Database } from "../../platform/db/database.js";
import { logger } from "../../platform/telemetry/logger.js";
import { backends } from "../../test/support/backends.js";
import { HashingEmbedder } from "./embedding/index.js";
import { migrations } from "./migrations/index.js";
import { BM25_INDEX } from "./ranker.js";
import { indexer } from "./indexer.js";
import { IndexStore } from "./store.js";
import type { IndexRow, SearchDB } from "./tables.js";
import {
  chooseVectorLeg,
  embedMany,
  embedOne,
  embeddingText,
  VECTOR_INDEX,
  vectorIndexWanted,
  vectorLiteral,
} from "./vectors.js";

const log = logger.child({ component: "vectors-test" });

function row(title: string, abstract: string, body = ""): IndexRow {
  return {
    document_id: randomUUID(),
    version: 1,
    title,
    abstract,
    body,
    authors: [],
    entities: [],
    keywords: [],
    journal: null,
    specialty: null,
    document_type: "research_paper",
    publication_date: null,
    visibility: "platform",
    owner: "someone",
  };
}

describe("document vectors", () => {
  it("are made of the title and abstract, else the start of the body", () => {
    expect(embeddingText(row("A title", "An abstract.", "The body"))).toBe("A title. An abstract.");
    expect(embeddingText(row("A title", "", "b".repeat(5000)))).toBe(`A title. ${"b".repeat(2000)}`);
  });

  it("are not made for a text without words (the zero vector)", async () => {
    const embedder = new HashingEmbedder();
    expect(await embedOne(embedder, "")).toBeUndefined();
    expect(await embedOne(embedder, " … — ")).toBeUndefined();
    expect(vectorLiteral(new Float32Array([0, 0.5, -1]))).toBe("[0,0.5,-1]");
  });
});

describe.each(backends())("the vector leg on $name", (backend) => {
  const schema = `search_vec${randomBytes(4).toString("hex")}`;
  let database: Database<SearchDB>;

  beforeAll(async () => {
    database = await openServiceDatabase<SearchDB>(
      "search",
      { DATABASE_URL: backend.env.DATABASE_URL, MEDMESH_DATA_DIR: "memory://", DB_POOL_MAX: 2 },
      schema,
      migrations,
      { pg_trgm, pg_textsearch, vector },
    );
  }, 60_000);

  afterAll(async () => {
    if (backend.env.DATABASE_URL) await database?.db.schema.dropSchema(schema).ifExists().cascade().execute();
    await database?.close();
  });

  it("is off without an embedder, and without pgvector on the server", async () => {
    expect(await chooseVectorLeg(database.db as never, schema, undefined, log)).toBeUndefined();
    const leg = await chooseVectorLeg(database.db as never, schema, new HashingEmbedder(), log);
    expect(leg !== undefined).toBe(backend.name === "pglite");
  });

  it.runIf(backend.name === "pglite")(
    "stores vectors, and drops another embedder's at start",
    async () => {
      const first = new HashingEmbedder();
      await chooseVectorLeg(database.db as never, schema, first, log);
      const store = new IndexStore(database.db, schema, BM25_INDEX, true);
      const r = row("Metformin in kidney disease", "Metformin dosing by renal function.");
      const v1 = await embedOne(first, embeddingText(r));
      await database.db.transaction().execute((trx) => store.upsert(trx, r, v1));
      const width = async () =>
        (
          await sql<{ dims: number | null; stored: number }>`
            select max(vector_dims(embedding)) as dims, count(embedding)::int as stored
            from ${sql.id(schema, "indexed_document")}`.execute(database.db)
        ).rows[0]!;
      expect(await width()).toEqual({ dims: 384, stored: 1 });
      // The same embedder again keeps them; another one's vectors are not comparable.
      await chooseVectorLeg(database.db as never, schema, first, log);
      expect((await width()).stored).toBe(1);
      await chooseVectorLeg(database.db as never, schema, new HashingEmbedder({ dimensions: 64 }), log);
      expect(await width()).toEqual({ dims: null, stored: 0 });
      const v = await embedOne(new HashingEmbedder({ dimensions: 64 }), embeddingText(r));
      await database.db.transaction().execute((trx) => store.upsert(trx, { ...r, version: 3 }, v));
      expect(await width()).toEqual({ dims: 64, stored: 1 });
    },
    60_000,
  );

  it.runIf(backend.name === "pglite")(
    "follow a title change: the row's vector is made again from the new title and the stored text",
    async () => {
      const embedder = new HashingEmbedder({ dimensions: 64 });
      const vectors = await chooseVectorLeg(database.db as never, schema, embedder, log);
      const store = new IndexStore(database.db, schema, BM25_INDEX, true);
      const indexing = indexer({ documents: undefined as never, token: undefined as never, store, vectors });
      const r = row("Statins in the elderly", "Statin therapy after seventy.");
      await database.db.transaction().execute(async (trx) => indexing.apply(trx, await indexing.upsertAction(r)));
      const stored = async () =>
        (
          await sql<{ embedding: string; title: string }>`
            select embedding::text as embedding, title from ${sql.id(schema, "indexed_document")}
            where document_id = ${r.document_id}`.execute(database.db)
        ).rows[0]!;
      const meta = toMetadataOf(r);
      // Same title: nothing to embed.
      expect(await indexing.updateAction(r.document_id, meta)).not.toHaveProperty("vector");
      const renamed = { ...meta, title: "Aspirin for primary prevention" };
      const action = await indexing.updateAction(r.document_id, renamed);
      await database.db.transaction().execute((trx) => indexing.apply(trx, action));
      const after = await stored();
      expect(after.title).toBe("Aspirin for primary prevention");
      // The new title's words reach the vocabulary behind did-you-mean.
      const learned = await sql<{ n: number }>`select count(*)::int as n from ${sql.id(schema, "vocabulary")}
        where kind = 'word' and word in ('aspirin', 'prevention')`.execute(database.db);
      expect(learned.rows[0]!.n).toBe(2);
      const expected = await embedOne(embedder, embeddingText({ ...r, title: "Aspirin for primary prevention" }));
      const distance = async (literal: string) =>
        (
          await sql<{ d: number }>`select (embedding <=> ${literal}::vector)::float8 as d
            from ${sql.id(schema, "indexed_document")} where document_id = ${r.document_id}`.execute(database.db)
        ).rows[0]!.d;
      expect(await distance(expected!)).toBeLessThan(1e-6);
      expect(await distance((await embedOne(embedder, embeddingText(r)))!)).toBeGreaterThan(0.1);
      // A vector computed from a version the row no longer holds is not written.
      const stale = await indexing.updateAction(r.document_id, { ...meta, title: "Something else" });
      await database.db.transaction().execute(async (trx) => {
        await store.upsert(trx, { ...r, version: 2, title: "Aspirin for primary prevention" }, undefined);
        await indexing.apply(trx, stale);
      });
      expect((await stored()).embedding).toBeNull();
    },
    60_000,
  );
});

describe("the vector index", () => {
  it("is left out on the embedded database by default, kept on a server or for related documents", () => {
    expect(vectorIndexWanted("auto", false, false)).toBe(false);
    expect(vectorIndexWanted("auto", true, false)).toBe(true);
    expect(vectorIndexWanted("auto", false, true)).toBe(true);
    expect(vectorIndexWanted("hnsw", false, false)).toBe(true);
    expect(vectorIndexWanted("none", true, true)).toBe(false);
  });

  it("when absent, SimilarDocuments ranks the documents sharing terms by exact distance", async () => {
    const schema = `search_vecidx${randomBytes(4).toString("hex")}`;
    const database = await openServiceDatabase<SearchDB>(
      "search",
      { MEDMESH_DATA_DIR: "memory://", DB_POOL_MAX: 1 },
      schema,
      migrations,
      { pg_trgm, pg_textsearch, vector },
    );
    try {
      const embedder = new HashingEmbedder();
      const hasIndex = async () =>
        (
          await sql<{ n: number }>`select count(*)::int as n from pg_indexes
            where schemaname = ${schema} and indexname = ${VECTOR_INDEX}`.execute(database.db)
        ).rows[0]!.n === 1;
      const rows = [
        row("Metformin in type 2 diabetes", "Metformin lowered glucose in adults with diabetes."),
        row("Metformin and kidney function", "Metformin dosing by renal function in diabetes."),
        row("Insulin pumps in type 1 diabetes", "Pumps improved glucose control in children."),
        row("Statins after stroke", "Statin therapy reduced recurrent stroke."),
        row("Asthma inhalers in children", "Inhaled steroids reduced asthma attacks."),
      ];
      const leg = (await chooseVectorLeg(database.db as never, schema, embedder, log, undefined, false))!;
      expect(leg.indexed).toBe(false);
      expect(await hasIndex()).toBe(false);
      const bounded = new IndexStore(database.db, schema, BM25_INDEX, true, undefined, false);
      const vectorsOf = await embedMany(
        embedder,
        rows.map((r) => embeddingText(r)),
      );
      await database.db.transaction().execute(async (trx) => {
        for (const [n, r] of rows.entries()) await bounded.upsert(trx, r, vectorsOf[n]);
      });
      const scope = { subject: "reader", admin: false };
      const without = await bounded.similar(rows[0]!.document_id, scope, 10);
      expect(without!.vectorLeg).toBe(true);
      const ids = (found: typeof without) => found!.hits.map((h) => h.document_id);
      expect(ids(without)).toContain(rows[1]!.document_id);
      // Documents sharing no term are not among the candidates without the index.
      expect(ids(without)).not.toContain(rows[3]!.document_id);
      // Made at start when wanted again: the neighbours then come from every vector.
      await chooseVectorLeg(database.db as never, schema, embedder, log, undefined, true);
      expect(await hasIndex()).toBe(true);
      const indexed = new IndexStore(database.db, schema, BM25_INDEX, true);
      const withIndex = await indexed.similar(rows[0]!.document_id, scope, 10);
      expect(ids(withIndex)[0]).toBe(ids(without)[0]);
      expect(ids(withIndex)).toContain(rows[3]!.document_id);
    } finally {
      await database.close();
    }
  }, 60_000);
});

function toMetadataOf(r: IndexRow) {
  const { title, authors, journal, specialty, document_type, publication_date, visibility, owner } = r;
  return { title, authors, journal, specialty, document_type, publication_date, visibility, owner };
}
