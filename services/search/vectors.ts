import { sql, type Kysely } from "kysely";
import type { Logger } from "../../platform/telemetry/logger.js";
import type { Embedder } from "./embedding/index.js";
import type { IndexRow } from "./tables.js";

/** The HNSW index over the stored vectors, where there is one (see vectorIndexWanted). */
export const VECTOR_INDEX = "indexed_document_embedding_idx";

/** SEARCH_VECTOR_INDEX. */
export type VectorIndexSetting = "auto" | "hnsw" | "none";

/**
 * Whether the vectors get an HNSW index. Search's vector leg never needs it: it ranks the matched
 * set (or its bounded candidates) by exact distance. Only a nearest-neighbour search over the
 * whole index does: related documents joining a search, and SimilarDocuments' vector leg (which
 * without the index ranks a bounded candidate set exactly; store.ts, similar). On the embedded
 * PGlite an HNSW insertion costs more than the rest of indexing a document together (wasm, one
 * thread: bench/results/search.md), so auto leaves it out there unless related documents are on;
 * a PostgreSQL server keeps it.
 */
export function vectorIndexWanted(setting: VectorIndexSetting, onServer: boolean, relatedOn: boolean): boolean {
  if (setting !== "auto") return setting === "hnsw";
  return onServer || relatedOn;
}

/** The vector leg, when this index has one: the embedder that fills and queries the column. */
export interface VectorLeg {
  embedder: Embedder;
  /** The vectors have their HNSW index (vectorIndexWanted). */
  indexed: boolean;
  /** Nearest documents at least this similar to a query join its results; undefined: none join. */
  relatedMinSimilarity?: number;
}

/** What a document's vector is made of: its title and what it is about, not the whole body. */
const EMBEDDED_BODY_CHARS = 2_000;

/**
 * Decides at start whether search has a vector leg, like ranker.ts decides the lexical one: it
 * needs an embedder (SEARCH_EMBEDDER not off) and pgvector on the server (embedded PGlite loads
 * it; CI's PostgreSQL 15 has none). The column's width is the embedder's, so the column is made
 * here, not in a migration; its comment names the embedder, and another embedder's vectors are
 * dropped (they are not comparable) until a Reindex or new versions fill the column again.
 */
export async function chooseVectorLeg(
  db: Kysely<unknown>,
  schema: string,
  embedder: Embedder | undefined,
  log: Logger,
  /** SEARCH_RELATED_MIN_SIMILARITY: related documents join from this similarity; undefined: never. */
  relatedMinSimilarity?: number,
  /** Keep the HNSW index (made if missing) or go without it (dropped if there). */
  index = true,
): Promise<VectorLeg | undefined> {
  if (!embedder) {
    log.info("no vector leg: SEARCH_EMBEDDER is off");
    return undefined;
  }
  try {
    await sql`create extension if not exists vector`.execute(db);
  } catch (err) {
    log.warn("pgvector is not available; searching without the vector leg", { error: (err as Error).message });
    return undefined;
  }
  const table = sql.id(schema, "indexed_document");
  const provenance = `${embedder.name} ${embedder.dimensions}`;
  const existing = await sql<{ comment: string | null }>`
    select col_description(a.attrelid, a.attnum) as comment
    from pg_attribute a
    where a.attrelid = (quote_ident(${schema}) || '.indexed_document')::regclass
      and a.attname = 'embedding' and not a.attisdropped
  `.execute(db);
  const found = existing.rows[0];
  if (found && found.comment !== provenance) {
    log.warn("the stored vectors come from another embedder; dropping them (Reindex fills them again)", {
      stored: found.comment ?? "unknown",
      embedder: provenance,
    });
    await sql`alter table ${table} drop column embedding`.execute(db);
  }
  if (!found || found.comment !== provenance) {
    await sql`alter table ${table} add column embedding vector(${sql.lit(embedder.dimensions)})`.execute(db);
    await sql`comment on column ${sql.id(schema, "indexed_document", "embedding")} is ${sql.lit(provenance)}`.execute(
      db,
    );
  }
  if (index) {
    // Built over the stored vectors when it is missing: single-threaded on PGlite, ~3 min at 100k.
    await sql`create index if not exists ${sql.id(VECTOR_INDEX)} on ${table}
              using hnsw (embedding vector_cosine_ops)`.execute(db);
  } else {
    await sql`drop index if exists ${sql.id(schema, VECTOR_INDEX)}`.execute(db);
  }
  const floor = relatedMinSimilarity;
  log.info("vector leg on: reciprocal rank fusion with the lexical ranker", {
    embedder: provenance,
    related_min_similarity: floor ?? "off",
    vector_index: index ? "hnsw" : "none (exact distance over bounded candidates)",
  });
  return floor === undefined ? { embedder, indexed: index } : { embedder, indexed: index, relatedMinSimilarity: floor };
}

/** The text a document's vector is computed from. */
export function embeddingText(row: Pick<IndexRow, "title" | "abstract" | "body">): string {
  const about = row.abstract || row.body.slice(0, EMBEDDED_BODY_CHARS);
  return `${row.title}. ${about}`;
}

/**
 * pgvector's text form of a vector, or undefined for the zero vector (a text without words):
 * cosine distance to it is undefined, so such a document gets no vector and a query no vector leg.
 */
export function vectorLiteral(v: Float32Array): string | undefined {
  if (!v.some((x) => x !== 0)) return undefined;
  return `[${Array.from(v).join(",")}]`;
}

/** One text's vector literal (see vectorLiteral). */
export async function embedOne(embedder: Embedder, text: string): Promise<string | undefined> {
  const [v] = await embedder.embed([text]);
  return v ? vectorLiteral(v) : undefined;
}

/** The vector literals of several texts, by one embedder call (see vectorLiteral). */
export async function embedMany(embedder: Embedder, texts: string[]): Promise<Array<string | undefined>> {
  if (texts.length === 0) return [];
  const vs = await embedder.embed(texts);
  return texts.map((_, n) => {
    const v = vs[n];
    return v ? vectorLiteral(v) : undefined;
  });
}
