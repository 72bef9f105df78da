import { sql, type Kysely, type RawBuilder } from "kysely";
import type { IndexMetadata, IndexRow, SearchDB } from "./tables.js";

/**
 * A row's words and names for the vocabulary of did-you-mean and Suggest, as [kind, word] pairs.
 * Words and authors of private documents stay out: a suggestion must not reveal them to others.
 * Entities are the lexicon's names, known to everyone.
 */
function vocabularyOf(
  row: Pick<IndexRow, "title" | "abstract" | "keywords" | "entities" | "authors" | "visibility">,
): Array<[string, string]> {
  const text = [row.title, row.abstract, ...row.keywords, ...row.entities].join(" ").toLowerCase();
  const words = new Set((text.match(/\p{L}[\p{L}\p{N}]*/gu) ?? []).filter((w) => w.length >= MIN_VOCABULARY_WORD));
  const shared = row.visibility === "platform";
  const entries: Array<[string, string]> = [
    ...(shared ? [...words].map((word): [string, string] => ["word", word]) : []),
    ...row.entities.map((word): [string, string] => ["entity", word]),
    ...(shared ? row.authors.map((word): [string, string] => ["author", word]) : []),
  ];
  // Duplicates within one insert would make ON CONFLICT touch a row twice.
  const seen = new Set<string>();
  return entries.filter(([kind, word]) => {
    const key = `${kind}\0${word}`;
    if (word.length > 200 || seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** How results are ordered; bm25 and ts_rank_cd are relevance, chosen once at start (ranker.ts). */
export type RankerName = "bm25" | "ts_rank_cd" | "date";

export interface Filters {
  specialties: string[];
  documentTypes: string[];
  journals: string[];
  authors: string[];
  entities: string[];
  publishedAfter: string;
  publishedBefore: string;
}

/** Who is searching: private documents are theirs to find only, unless they are an admin. */
export interface Scope {
  subject: string;
  admin: boolean;
}

export interface SearchParams {
  tsquery: string;
  bm25Text: string;
  ranker: RankerName;
  filters: Filters;
  scope: Scope;
  limit: number;
  offset: number;
  /** The query's vector literal: fuse the vector leg with the lexical ranker (not for date order). */
  vector?: string;
  /**
   * With `vector`: the nearest documents (visible, filtered) whose cosine similarity to the query
   * is at least this join the results though the words do not match them; see `search`.
   */
  relatedMinSimilarity?: number;
}

export interface FacetCount {
  value: string;
  count: number;
}

export interface HitRow {
  document_id: string;
  version: number;
  title: string;
  authors: string[];
  journal: string | null;
  publication_date: string | null;
  document_type: string;
  specialty: string | null;
  visibility: string;
  score: number;
  /** ts_headline output, matches between HIGHLIGHT_START and HIGHLIGHT_END. */
  snippet: string;
}

export interface SearchPage {
  /** Results: the matched set, plus the related documents that joined it. */
  total: number;
  /**
   * The words matched more documents than the exact statement handles (see `search`): total and
   * matched are the planner's estimate, facets count the candidate set, and the hits are the
   * best of the candidates.
   */
  estimated: boolean;
  /** Results pages can reach: total, or the candidates and related documents when estimated. */
  pageable: number;
  /** Of total, the documents the words matched. */
  matched: number;
  facets: Record<FacetField, FacetCount[]>;
  hits: HitRow[];
}

export const FACET_FIELDS = ["specialty", "document_type", "journal", "author", "entity", "publication_year"] as const;
export type FacetField = (typeof FACET_FIELDS)[number];

/** Values per facet: the largest counts; a long tail of journals helps nobody choose. */
const FACET_LIMIT = 20;

// Control characters mark the matched words in headlines: they cannot occur in indexed text
// (processing extracts printable text), so no document can forge a highlight.
export const HIGHLIGHT_START = "\u0002";
export const HIGHLIGHT_END = "\u0003";
const HEADLINE_OPTIONS = `StartSel=${HIGHLIGHT_START}, StopSel=${HIGHLIGHT_END}, MaxWords=35, MinWords=15, MaxFragments=2, FragmentDelimiter=" … "`;

/** Text beyond this is not put through ts_headline: a snippet comes from the start of a long body. */
const HEADLINE_SOURCE_CHARS = 20_000;

/** Matches BM25 orders for the first pages, preselected by ts_rank_cd; see `search`. */
const BM25_RERANK = 200;
/** The preselection for pages past BM25_RERANK: as deep as pages go (service.ts, MAX_RESULT_OFFSET). */
const MAX_RERANK = 1050;

/** The newest-matches window holds this many times the bound's estimated matches; see dateCutoff. */
const DATE_WINDOW_MARGIN = 1.5;

/** Reciprocal rank fusion's k: a leg's rank r contributes 1 / (RRF_K + r). */
const RRF_K = 60;
/**
 * Nearest documents by vector a search looks at to join its results: the HNSW index's default
 * candidate list (hnsw.ef_search 40) returns no more than this in one scan.
 */
const RELATED_NEIGHBOURS = 40;

/** Neighbours SimilarDocuments takes from each leg before fusing. */
const SIMILAR_LEG = 200;

/** Documents sharing a term whose vectors SimilarDocuments compares, where there is no HNSW index. */
const SIMILAR_CANDIDATES = 2000;

/** The bound on the word indexes' GIN fast-update lists, in kB (boundPendingLists). */
const GIN_PENDING_LIST_KB = 256;

/** Terms of a document that SimilarDocuments searches for. */
const SIMILAR_TERMS = 12;

/** Words shorter than this are not worth a did-you-mean. */
const MIN_VOCABULARY_WORD = 3;

function anyOf(values: string[], test: (v: string) => RawBuilder<unknown>): RawBuilder<unknown> | undefined {
  if (values.length === 0) return undefined;
  return sql`(${sql.join(values.map(test), sql` or `)})`;
}

/** The WHERE conditions besides the text match: visibility first, then each filter. */
function conditions(f: Filters, scope: Scope): RawBuilder<unknown>[] {
  const all: Array<RawBuilder<unknown> | undefined> = [
    scope.admin ? undefined : sql`(d.visibility = 'platform' or d.owner = ${scope.subject})`,
    anyOf(f.specialties, (v) => sql`d.specialty = ${v}`),
    anyOf(f.documentTypes, (v) => sql`d.document_type = ${v}`),
    anyOf(f.journals, (v) => sql`d.journal = ${v}`),
    anyOf(f.authors, (v) => sql`d.authors @> ${JSON.stringify([v])}::jsonb`),
    anyOf(f.entities, (v) => sql`d.entities @> ${JSON.stringify([v])}::jsonb`),
    f.publishedAfter ? sql`d.publication_date >= ${f.publishedAfter}::date` : undefined,
    f.publishedBefore ? sql`d.publication_date <= ${f.publishedBefore}::date` : undefined,
  ];
  return all.filter((c): c is RawBuilder<unknown> => c !== undefined);
}

function facetQuery(field: FacetField): RawBuilder<unknown> {
  const grouped = (expr: RawBuilder<unknown>, from: RawBuilder<unknown> = sql`m`) =>
    sql`(select coalesce(json_agg(json_build_object('value', v, 'count', c) order by c desc, v), '[]'::json)
         from (select ${expr} as v, count(*) as c from ${from} where ${expr} is not null and ${expr} <> ''
               group by 1 order by 2 desc, 1 limit ${sql.lit(FACET_LIMIT)}) x)`;
  switch (field) {
    case "specialty":
      return grouped(sql`m.specialty`);
    case "document_type":
      return grouped(sql`m.document_type`);
    case "journal":
      return grouped(sql`m.journal`);
    case "author":
      return grouped(sql`a.value`, sql`m, jsonb_array_elements_text(m.authors) a`);
    case "entity":
      return grouped(sql`e.value`, sql`m, jsonb_array_elements_text(m.entities) e`);
    case "publication_year":
      return grouped(sql`to_char(m.publication_date, 'YYYY')`);
  }
}

/** When a search stops being exact; see `IndexStore.search`. */
export interface BoundedSearch {
  /** Above this many estimated matches, a search ranks a candidate set instead of every match. */
  exactMatchLimit: number;
  /** Matches in the candidate set; pages end with it (1,050 lets them go as deep as exact ones). */
  candidates: number;
}

export const DEFAULT_BOUNDED_SEARCH: BoundedSearch = { exactMatchLimit: 5000, candidates: 2000 };

/** The index's rows and the queries over them. */
export class IndexStore {
  private readonly bm25Index: string;
  private readonly bounded: BoundedSearch;

  constructor(
    private readonly db: Kysely<SearchDB>,
    private readonly schema: string,
    bm25IndexName: string,
    /** The table has the embedding column (vectors.ts made it); otherwise vectors are never written. */
    private readonly vectors = false,
    bounded: BoundedSearch = DEFAULT_BOUNDED_SEARCH,
    /** The vectors have an HNSW index; without one, SimilarDocuments ranks bounded candidates. */
    private readonly vectorIndex = true,
  ) {
    this.bm25Index = `${schema}.${bm25IndexName}`;
    this.bounded = bounded;
  }

  /**
   * Keeps GIN's fast-update lists of the word indexes short. New rows wait in that list until it
   * outgrows gin_pending_list_limit (4 MB by default) or a vacuum merges it, and every search
   * through the index reads all of it for each of its terms: at 100k documents, a 3.3 MB list
   * made an expanded query (five alternatives) about 20 ms slower. A 256 kB bound keeps inserts
   * batched while a search reads at most that; the list there now is merged at once.
   */
  async boundPendingLists(): Promise<void> {
    const setting = `gin_pending_list_limit=${GIN_PENDING_LIST_KB}`;
    for (const index of ["indexed_document_tsv_idx", "indexed_document_title_tsv_idx"]) {
      const name = sql.id(this.schema, index);
      // Set once; altering again at every start would only queue behind other replicas' locks.
      const current = await sql<{ set: boolean }>`
        select coalesce(${setting} = any(c.reloptions), false) as set
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = ${this.schema} and c.relname = ${index}`.execute(this.db);
      if (!current.rows[0]?.set)
        await sql`alter index ${name} set (gin_pending_list_limit = ${sql.lit(GIN_PENDING_LIST_KB)})`.execute(this.db);
      await sql`select gin_clean_pending_list((quote_ident(${this.schema}) || '.' || quote_ident(${index}))::regclass)`.execute(
        this.db,
      );
    }
  }

  /**
   * Gathers the index table's column statistics, which the match estimate reads. A server's
   * autovacuum does this by itself; the embedded PGlite has no autovacuum (main.ts calls this).
   */
  async analyze(): Promise<void> {
    await sql`analyze ${this.table("indexed_document")}`.execute(this.db);
  }

  /**
   * The planner's estimate of the rows the conditions match: no row is read, only the column
   * statistics (ANALYZE's most common lexemes) are consulted, so it costs a planning pass.
   */
  private async estimateMatches(where: RawBuilder<unknown>[]): Promise<number> {
    const res = await sql<{ "QUERY PLAN": unknown }>`
      explain (format json) select 1 from ${this.table("indexed_document")} d
      where ${sql.join(where, sql` and `)}
    `.execute(this.db);
    const raw = res.rows[0]?.["QUERY PLAN"];
    const plan = (typeof raw === "string" ? JSON.parse(raw) : raw) as Array<{ Plan: { "Plan Rows": number } }>;
    return Math.round(Number(plan[0]?.Plan["Plan Rows"] ?? 0));
  }

  /**
   * The matched set's rows, as `search` reads them (the columns it needs and the tsvector it
   * scores), with the CTEs they come from. Exact (no bound): every match. Bounded, by relevance:
   * the documents whose title alone matches come first (their own GIN index finds them; title
   * words weigh most in every ranker), then other matches in storage order until `bound`. Bounded,
   * by date: the newest matches, found through the date index (see dateCutoff).
   */
  private matchedRows(
    where: RawBuilder<unknown>[],
    scoped: RawBuilder<unknown>[],
    negated: boolean,
    bound: number | undefined,
    dateCutoff: string | undefined,
  ): { ctes: RawBuilder<unknown>; rows: RawBuilder<unknown> } {
    const table = this.table("indexed_document");
    const all = sql.join(where, sql` and `);
    if (bound === undefined) return { ctes: sql``, rows: sql`select d.* from ${table} d, q where ${all}` };
    const cols = sql`d.document_id, d.specialty, d.document_type, d.journal, d.authors, d.entities,
                     d.publication_date, d.search_tsv`;
    const limit = sql.lit(bound);
    if (dateCutoff !== undefined) {
      // The window from the cutoff holds about 1.5 times the bound's matches: the GIN bitmap and
      // the date index's range are intersected, and only those rows are read and sorted. If it
      // held fewer (the estimate was high), the older matches fill the bound, in date order.
      const newest = sql`d.publication_date desc nulls last, d.document_id`;
      return {
        ctes: sql`dm as materialized (
            select ${cols} from ${table} d, q
            where ${all} and d.publication_date >= ${dateCutoff}::date
            order by ${newest} limit ${limit}
          ),`,
        rows: sql`select * from dm union all (
            select ${cols} from ${table} d, q
            where ${all} and (d.publication_date < ${dateCutoff}::date or d.publication_date is null)
            order by ${newest} limit ${limit} - (select count(*) from dm))`,
      };
    }
    // A title match is a match, except where the query excludes a word the rest of the text has.
    const titleMatch = sql.join([sql`d.title_tsv @@ q.q`, ...(negated ? where : scoped)], sql` and `);
    return {
      ctes: sql`tm as materialized (
          select ${cols} from ${table} d, q where ${titleMatch} limit ${limit}
        ),`,
      rows: sql`select * from tm union all (
          select ${cols} from ${table} d, q where ${all} and not (d.title_tsv @@ q.q)
          limit ${limit} - (select count(*) from tm))`,
    };
  }

  /**
   * Where the newest `bound` matches probably begin: the publication date above which lies the
   * share of the table that holds the bound's matches (bound over the estimated matches), with a
   * margin. Read from ANALYZE's histogram of the column (equal-count buckets), so no row is read;
   * without statistics the window is every date (the whole match set, sorted).
   */
  private async dateCutoff(bound: number, estimate: number): Promise<string> {
    const share = Math.min(1, (bound * DATE_WINDOW_MARGIN) / Math.max(estimate, 1));
    const res = await sql<{ cutoff: string }>`
      select coalesce((
        select (h.bounds)[greatest(1, ceil(array_length(h.bounds, 1) * (1 - ${share}::float8)))::int]::text
        from (select histogram_bounds::text::date[] as bounds from pg_stats
              where schemaname = ${this.schema} and tablename = 'indexed_document'
                and attname = 'publication_date') h), '-infinity') as cutoff
    `.execute(this.db);
    return res.rows[0]?.cutoff ?? "-infinity";
  }

  /**
   * The document's terms that say most about it: weight in the document (title counts four, an
   * abstract or entity two) times how rare the term is in the index. The rarity comes from
   * ANALYZE's most common lexemes of the column, so no row is read; a term not among them is
   * rarer than the rarest of them. Without the rarity, words every abstract shares ("patients")
   * were chosen first and matched most of the index.
   */
  private async distinctiveTerms(candidates: { lexeme: string; weight: number }[]): Promise<string[]> {
    if (candidates.length === 0) return [];
    const stats = await sql<{ lexeme: string; freq: number; rarest: number }>`
      select lexeme, freq, rarest from (
        select e.lexeme, e.freq::float8 as freq,
               (min(e.freq) filter (where e.lexeme is not null) over ())::float8 as rarest
        from pg_stats s, unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) as e(lexeme, freq)
        where s.schemaname = ${this.schema} and s.tablename = 'indexed_document' and s.attname = 'search_tsv'
      ) common
      where lexeme = any(${candidates.map((c) => c.lexeme)}::text[])
    `.execute(this.db);
    const share = new Map(stats.rows.map((r) => [r.lexeme, r.freq]));
    const rarest = stats.rows[0]?.rarest;
    // Without statistics every term counts as equally rare, and the weight alone decides.
    const unseen = rarest !== undefined ? rarest / 2 : 0.5;
    return candidates
      .map((c) => ({ lexeme: c.lexeme, score: c.weight * Math.log(1 / (share.get(c.lexeme) ?? unseen)) }))
      .sort((a, b) => b.score - a.score || (a.lexeme < b.lexeme ? -1 : a.lexeme > b.lexeme ? 1 : 0))
      .slice(0, SIMILAR_TERMS)
      .map((c) => c.lexeme);
  }

  /** A table of the schema in raw SQL, which the query builder's schema scoping does not reach. */
  private table(name: keyof SearchDB) {
    return sql.id(this.schema, name);
  }

  /**
   * Writes the document's row unless the index already holds a newer version of it (events of
   * two versions may be handled out of order after a redelivery). Returns whether it wrote.
   */
  async upsert(trx: Kysely<SearchDB>, row: IndexRow, embedding?: string): Promise<boolean> {
    const values = {
      ...row,
      ...(this.vectors ? { embedding: embedding === undefined ? null : sql<string>`${embedding}::vector` } : {}),
      authors: JSON.stringify(row.authors),
      entities: JSON.stringify(row.entities),
      keywords: JSON.stringify(row.keywords),
      keyword_text: row.keywords.join(" "),
      entity_text: row.entities.join(" "),
    };
    const { document_id: _id, ...changes } = values;
    const entries = vocabularyOf(row);
    // The row and its vocabulary in one statement (a round trip costs more than either on the
    // embedded database); the words go in only when the row was written.
    const written = await trx
      .with("written", (q) =>
        q
          .insertInto("indexed_document")
          .values(values)
          .onConflict((oc) =>
            oc
              .column("document_id")
              .doUpdateSet({ ...changes, indexed_at: sql<Date>`now()` })
              .where("indexed_document.version", "<=", row.version),
          )
          .returning("document_id"),
      )
      .with("learned", (q) =>
        q
          .insertInto("vocabulary")
          .columns(["kind", "word"])
          .expression(
            sql`select e->>0, e->>1 from jsonb_array_elements(${JSON.stringify(entries)}::jsonb) as e
                where exists (select 1 from written)`,
          )
          .onConflict((oc) => oc.doNothing()),
      )
      .selectFrom("written")
      .select("document_id")
      .executeTakeFirst();
    return written !== undefined;
  }

  async remove(trx: Kysely<SearchDB>, documentId: string): Promise<boolean> {
    const res = await trx.deleteFrom("indexed_document").where("document_id", "=", documentId).executeTakeFirst();
    return Number(res.numDeletedRows) > 0;
  }

  /**
   * The metadata that documents may change without a new version; a specialty left empty keeps
   * processing's. `vector`: the row's vector for the new title, computed from the version
   * `vector.version` (written only if the row still holds that version).
   */
  async updateMetadata(
    trx: Kysely<SearchDB>,
    documentId: string,
    meta: IndexMetadata,
    vector?: { version: number; embedding: string },
  ): Promise<boolean> {
    const updated = await trx
      .updateTable("indexed_document")
      .set({
        ...(this.vectors && vector
          ? {
              embedding: sql<string>`case when version = ${vector.version} then ${vector.embedding}::vector else embedding end`,
            }
          : {}),
        ...meta,
        title: meta.title || sql<string>`title`,
        specialty: meta.specialty ?? sql<string>`specialty`,
        authors: JSON.stringify(meta.authors),
        indexed_at: sql<Date>`now()`,
      })
      .where("document_id", "=", documentId)
      .returning(["title", "abstract", "authors", "entities", "keywords", "visibility"])
      .executeTakeFirst();
    if (!updated) return false;
    // A new title or a document made public brings words and authors the vocabulary may lack.
    const entries = vocabularyOf(updated);
    await sql`insert into ${this.table("vocabulary")} (kind, word)
              select e->>0, e->>1 from jsonb_array_elements(${JSON.stringify(entries)}::jsonb) as e
              on conflict do nothing`.execute(trx);
    return true;
  }

  /** What the row's vector is made of (see embeddingText), and of which version. */
  async embeddingSource(
    documentId: string,
  ): Promise<{ version: number; title: string; abstract: string; body: string } | undefined> {
    return this.db
      .selectFrom("indexed_document")
      .select(["version", "title", "abstract", sql<string>`left(body, 2000)`.as("body")])
      .where("document_id", "=", documentId)
      .executeTakeFirst();
  }

  async versionOf(documentId: string): Promise<number | undefined> {
    const row = await this.db
      .selectFrom("indexed_document")
      .select("version")
      .where("document_id", "=", documentId)
      .executeTakeFirst();
    return row?.version;
  }

  async documentIds(): Promise<string[]> {
    const rows = await this.db.selectFrom("indexed_document").select("document_id").execute();
    return rows.map((r) => r.document_id);
  }

  /**
   * One statement: the matched set (text match, visibility, filters) with its total and facet
   * counts, and the requested page with headlines, which ts_headline computes for those rows
   * only. The tsquery decides what matches; the ranker only orders.
   */
  async search(p: SearchParams): Promise<SearchPage> {
    const q = sql`to_tsquery('english', ${p.tsquery})`;
    // The shape follows the estimated match count. Ranking, counting and faceting every match of
    // a word in 40% of 100k documents costs ~300 ms (ts_rank_cd and the @@ check decompress
    // each row's tsvector). Above exactMatchLimit the matched set is bounded to `candidates`
    // matches chosen without scoring a row (title matches first, or the newest by date; see
    // matchedRows), which are ranked, faceted and paged as the whole set would be; the total
    // is the planner's estimate. A bound that was not reached means the set was whole after
    // all, and the answer is exact.
    const estimate = await this.estimateMatches([sql`d.search_tsv @@ ${q}`, ...conditions(p.filters, p.scope)]);
    const bound = estimate > this.bounded.exactMatchLimit ? this.bounded.candidates : undefined;
    const dateCutoff = bound !== undefined && p.ranker === "date" ? await this.dateCutoff(bound, estimate) : undefined;
    // pg_textsearch's <@> costs ~0.18 ms per row on PGlite (bench/results/search.md), too much
    // for every match of a common word. So ts_rank_cd (cheap, the same field weights) preselects
    // the best BM25_RERANK matches and BM25 orders those; pages past them are ordered by a wider
    // preselection. The index's own top-k path (ORDER BY <@> LIMIT k) measured slower still.
    const rerank = p.ranker === "bm25";
    const hybrid = p.vector !== undefined && p.ranker !== "date";
    // Related documents: the query's nearest neighbours by vector above a similarity floor join
    // the matched set, so a paper that words the idea differently is found. Results (total,
    // facets, pages) are then the matched set and those; the lexical leg still ranks only what
    // the words matched, the vector leg ranks all of them.
    const related = hybrid && p.relatedMinSimilarity !== undefined;
    const matchedSet = related ? sql`mt` : sql`m`;
    const score = p.ranker === "date" ? sql`0` : sql`ts_rank_cd(d.search_tsv, q.q)`;
    const order =
      p.ranker === "date"
        ? sql`m.publication_date desc nulls last, m.document_id`
        : sql`m.score desc, m.publication_date desc nulls last, m.document_id`;
    const preselect = p.offset + p.limit <= BM25_RERANK ? BM25_RERANK : MAX_RERANK;
    const lexical = rerank
      ? sql`(select top.document_id, top.publication_date,
                    -(d.bm25_text <@> to_bm25query(${p.bm25Text}, ${this.bm25Index}))::float8 as score
             from (select m.document_id, m.publication_date from ${matchedSet} m
                   order by ${order} limit ${sql.lit(preselect)}) top
             join ${this.table("indexed_document")} d using (document_id))`
      : matchedSet;
    // Hybrid: both legs rank the results, and each document scores 1/(k + its lexical rank) +
    // 1/(k + its rank by nearness to the query's vector). Both legs read the results, so the
    // filters and the caller's scope hold in both. Results outside both legs' depth (pages past
    // it) score 0 and follow by date.
    const ranked = hybrid
      ? sql`(select m.document_id, m.publication_date,
                    (coalesce(1.0 / (${sql.lit(RRF_K)} + lex.r), 0) + coalesce(1.0 / (${sql.lit(RRF_K)} + vec.r), 0))::float8 as score
             from m
             left join (select m.document_id, row_number() over (order by ${order}) as r
                        from ${lexical} m order by r limit ${sql.lit(preselect)}) lex using (document_id)
             left join (select m.document_id,
                               row_number() over (order by d.embedding <=> q.v, m.document_id) as r
                        from m join ${this.table("indexed_document")} d using (document_id), q
                        where d.embedding is not null
                        order by r limit ${sql.lit(preselect)}) vec using (document_id))`
      : lexical;
    const scoped = conditions(p.filters, p.scope);
    const where = [sql`d.search_tsv @@ q.q`, ...scoped];
    const facets = FACET_FIELDS.map((f) => sql`${facetQuery(f)} as ${sql.id(`f_${f}`)}`);
    const columns = sql`d.document_id, d.specialty, d.document_type, d.journal, d.authors, d.entities, d.publication_date`;
    const matchedRows = this.matchedRows(where, scoped, p.tsquery.includes("!"), bound, dateCutoff);
    const sets = related
      ? sql`${matchedRows.ctes}mt as materialized (
          select ${columns}, (${score})::float8 as score from (${matchedRows.rows}) d, q
        ),
        near as materialized (
          select * from (
            select ${columns}, d.embedding <=> q.v as distance
            from ${this.table("indexed_document")} d, q
            where d.embedding is not null${sql.join(
              scoped.map((c) => sql` and ${c}`),
              sql``,
            )}
            order by d.embedding <=> q.v limit ${sql.lit(RELATED_NEIGHBOURS)}
          ) n
          where n.distance <= ${1 - p.relatedMinSimilarity!}::float8
        ),
        m as materialized (
          select * from mt
          union all
          select ${sql.raw("n.document_id, n.specialty, n.document_type, n.journal, n.authors, n.entities, n.publication_date")}, 0::float8
          from near n where not exists (select 1 from mt where mt.document_id = n.document_id)
        )`
      : sql`${matchedRows.ctes}m as materialized (
          select ${columns}, (${score})::float8 as score from (${matchedRows.rows}) d, q
        )`;
    const result = await sql<Record<string, unknown>>`
      with q as (select ${q} as q${hybrid ? sql`, ${p.vector}::vector as v` : sql``}),
      ${sets},
      page as (
        select m.document_id, m.score, row_number() over (order by ${order}) as ord
        from ${ranked} m order by ${order} limit ${p.limit} offset ${p.offset}
      )
      select
        (select count(*) from m)::int as total,
        (select count(*) from ${matchedSet})::int as matched,
        ${sql.join(facets, sql`, `)},
        (select coalesce(json_agg(h order by h.ord), '[]'::json) from (
          select page.ord, d.document_id, d.version, d.title, d.authors, d.journal,
                 to_char(d.publication_date, 'YYYY-MM-DD') as publication_date, d.document_type,
                 d.specialty, d.visibility, page.score,
                 ts_headline('english',
                   left(case when d.abstract <> '' then d.abstract else d.body end, ${sql.lit(HEADLINE_SOURCE_CHARS)}),
                   q.q, ${HEADLINE_OPTIONS}) as snippet
          from page join ${this.table("indexed_document")} d using (document_id), q
        ) h) as hits
    `.execute(this.db);
    const row = result.rows[0]!;
    const facetCounts = {} as Record<FacetField, FacetCount[]>;
    for (const f of FACET_FIELDS) {
      facetCounts[f] = (row[`f_${f}`] as Array<{ value: string; count: number }>).map((v) => ({
        value: String(v.value),
        count: Number(v.count),
      }));
    }
    const total = Number(row.total);
    const matched = Number(row.matched);
    // Fewer candidates than the bound: every match was there, so the counts are exact.
    const estimated = bound !== undefined && matched >= bound;
    const matchedEstimate = estimated ? Math.max(estimate, matched) : matched;
    return {
      total: estimated ? total - matched + matchedEstimate : total,
      matched: matchedEstimate,
      estimated,
      pageable: total,
      facets: facetCounts,
      hits: row.hits as HitRow[],
    };
  }

  /**
   * The indexed word closest to each given word that is not itself indexed, if one is close enough.
   * The vocabulary holds words of platform documents only; a word of the caller's own private
   * documents (any private document for an admin) is known too, so an owner who finds their own
   * paper is not asked whether they meant another word.
   */
  async corrections(words: string[], scope: Scope): Promise<Array<{ word: string; suggestion: string }>> {
    const out: Array<{ word: string; suggestion: string }> = [];
    const ownPrivate = scope.admin
      ? sql`d.visibility <> 'platform'`
      : sql`d.visibility <> 'platform' and d.owner = ${scope.subject}`;
    for (const word of words) {
      if (word.length < MIN_VOCABULARY_WORD) continue;
      const res = await sql<{ known: boolean; suggestion: string | null }>`
        select (exists (select 1 from ${this.table("vocabulary")} where kind = 'word' and word = ${word})
                or exists (select 1 from ${this.table("indexed_document")} d
                           where ${ownPrivate} and d.search_tsv @@ plainto_tsquery('english', ${word}))) as known,
               (select v.word from ${this.table("vocabulary")} v
                 where v.kind = 'word' and v.word % ${word}
                 order by similarity(v.word, ${word}) desc, v.word limit 1) as suggestion
      `.execute(this.db);
      const r = res.rows[0];
      if (r && !r.known && r.suggestion) out.push({ word, suggestion: r.suggestion });
    }
    return out;
  }

  /** Titles, entities and authors close to what was typed: prefix matches first, then similar ones. */
  async suggest(
    prefix: string,
    scope: Scope,
    limit: number,
  ): Promise<Array<{ text: string; kind: string; document_id: string | null }>> {
    const p = prefix.toLowerCase();
    const like = `${p.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
    const visible = scope.admin ? sql`true` : sql`(d.visibility = 'platform' or d.owner = ${scope.subject})`;
    const res = await sql<{ text: string; kind: string; document_id: string | null; rank: number }>`
      select text, kind, document_id from (
        select d.title as text, 'title' as kind, d.document_id::text as document_id,
               case when lower(d.title) like ${like} then 2 else word_similarity(${p}, lower(d.title)) end as rank
        from ${this.table("indexed_document")} d
        where (lower(d.title) like ${like} or ${p} <% lower(d.title)) and ${visible}
        union all
        select v.word, v.kind, null,
               case when v.word like ${like} then 2 else word_similarity(${p}, v.word) end
        from ${this.table("vocabulary")} v
        where v.kind in ('entity', 'author') and (lower(v.word) like ${like} or ${p} <% lower(v.word))
        union all
        -- Authors of private documents stay out of the shared vocabulary; their owner (and
        -- admins) still get them, read from the documents they can see.
        select distinct a.name, 'author', null,
               case when lower(a.name) like ${like} then 2 else word_similarity(${p}, lower(a.name)) end
        from ${this.table("indexed_document")} d, jsonb_array_elements_text(d.authors) as a(name)
        where d.visibility <> 'platform' and ${scope.admin ? sql`true` : sql`d.owner = ${scope.subject}`}
          and (lower(a.name) like ${like} or ${p} <% lower(a.name))
          and not exists (select 1 from ${this.table("vocabulary")} v
                          where v.kind = 'author' and v.word = a.name)
      ) s
      order by rank desc, length(text), text
      limit ${limit}
    `.execute(this.db);
    return res.rows;
  }

  /**
   * More like this: the document's heaviest terms (title words count four times, abstract,
   * keywords and entities twice, body once), then the documents that share most of them. The
   * terms are lexemes already, so they are matched as they are ('simple'), not stemmed again.
   */
  async similar(
    documentId: string,
    scope: Scope,
    limit: number,
  ): Promise<{ terms: string[]; hits: HitRow[]; vectorLeg: boolean } | undefined> {
    const visible = scope.admin ? sql`true` : sql`(d.visibility = 'platform' or d.owner = ${scope.subject})`;
    const source = await sql<{ lexeme: string; weight: number }>`
      select u.lexeme,
             sum((select sum(case w when 'A' then 4 when 'B' then 2 else 1 end) from unnest(u.weights) w))::float8
               as weight
      from ${this.table("indexed_document")} d, unnest(d.search_tsv) u
      where d.document_id = ${documentId} and ${visible}
      group by u.lexeme
      order by weight desc, u.lexeme
      limit 200
    `.execute(this.db);
    const probe = await sql<{ found: boolean; has_vector: boolean }>`
      select true as found, ${this.vectors ? sql`d.embedding is not null` : sql`false`} as has_vector
      from ${this.table("indexed_document")} d where d.document_id = ${documentId} and ${visible}
    `.execute(this.db);
    const src = probe.rows[0];
    if (!src) return undefined;
    const terms = await this.distinctiveTerms(source.rows.filter((r) => /^[\p{L}][\p{L}\p{N}]{2,}$/u.test(r.lexeme)));
    const vectorLeg = src.has_vector;
    if (terms.length === 0 && !vectorLeg) return { terms, hits: [], vectorLeg };
    // Two legs, fused by reciprocal rank: documents sharing the heaviest terms, and (when the
    // document has a vector) its nearest neighbours by embedding, which the HNSW index finds.
    const tsquery = terms.length > 0 ? terms.map((t) => `'${t}'`).join(" | ") : "";
    // Ranked among the first SIMILAR_CANDIDATES documents sharing a term, as Search bounds a
    // common word: scoring every document that shares any of the terms took seconds at 100k.
    const lex = sql`select d.document_id, row_number() over (order by ts_rank_cd(d.search_tsv, q.q) desc, d.document_id) as r
      from (select d.document_id, d.search_tsv from ${this.table("indexed_document")} d, q
            where d.search_tsv @@ q.q and d.document_id <> ${documentId} and ${visible}
            limit ${sql.lit(SIMILAR_CANDIDATES)}) d, q
      order by r limit ${sql.lit(SIMILAR_LEG)}`;
    const target = sql`(select embedding from ${this.table("indexed_document")} where document_id = ${documentId})`;
    // With the HNSW index the neighbours come from the whole index. Without it (the embedded
    // default, vectors.ts) an exact scan of every vector would grow with the index, so the
    // neighbours are looked for among the documents sharing any of the heaviest terms (the
    // first SIMILAR_CANDIDATES the term index yields), by exact distance.
    const neighbours = this.vectorIndex
      ? sql`${this.table("indexed_document")} d`
      : sql`(select d.* from ${this.table("indexed_document")} d, q
             where d.search_tsv @@ q.q and d.document_id <> ${documentId} and ${visible}
             limit ${sql.lit(SIMILAR_CANDIDATES)}) d`;
    const vec = vectorLeg
      ? sql`select n.document_id, row_number() over (order by n.distance, n.document_id) as r from (
          select d.document_id, d.embedding <=> ${target} as distance
          from ${neighbours}
          where d.embedding is not null and d.document_id <> ${documentId} and ${visible}
          order by distance limit ${sql.lit(SIMILAR_LEG)}) n`
      : sql`select null::uuid as document_id, null::bigint as r where false`;
    const res = await sql<HitRow>`
      with q as (select to_tsquery('simple', ${tsquery}) as q),
      lex as (${lex}),
      vec as (${vec}),
      f as (select document_id,
                   (coalesce(1.0 / (${sql.lit(RRF_K)} + lex.r), 0) + coalesce(1.0 / (${sql.lit(RRF_K)} + vec.r), 0))::float8 as score
            from lex full outer join vec using (document_id))
      select d.document_id, d.version, d.title, d.authors, d.journal,
             to_char(d.publication_date, 'YYYY-MM-DD') as publication_date, d.document_type, d.specialty,
             d.visibility, f.score, '' as snippet
      from f join ${this.table("indexed_document")} d using (document_id)
      order by f.score desc, d.document_id
      limit ${limit}
    `.execute(this.db);
    return { terms, hits: res.rows, vectorLeg };
  }
}
