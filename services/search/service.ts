import { createHash } from "node:crypto";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { Role } from "../../gen/medmesh/access/v1/access_pb.js";
import { DocumentType, Visibility } from "../../gen/medmesh/documents/v1/documents_pb.js";
import {
  Ranker,
  SearchHitSchema,
  SearchResponseSchema,
  SortOrder,
  type SearchResponse,
  type SearchFilters,
  type SearchHit,
  type SearchService,
} from "../../gen/medmesh/search/v1/search_pb.js";
import type { VersionedCache } from "../../platform/cache/versioned-cache.js";
import { callerOf } from "../../platform/grpc/caller.js";
import { logger } from "../../platform/telemetry/logger.js";
import { enumNames } from "../../platform/grpc/enum-names.js";
import { invalidArgument } from "../../platform/grpc/errors.js";
import type { Principal } from "../../platform/grpc/interceptors/access.js";
import { decodePageToken, encodePageToken } from "../../platform/grpc/page-token.js";
import { QuerySyntaxError, understandQuery, type UnderstoodQuery } from "./query/understand.js";
import type { RelevanceRanker } from "./ranker.js";
import { readAnalytics, type SearchRecord } from "./analytics.js";
import type { Reindexer } from "./reindex.js";
import { embedOne, type VectorLeg } from "./vectors.js";
import type { SearchDB } from "./tables.js";
import type { Kysely } from "kysely";
import {
  FACET_FIELDS,
  HIGHLIGHT_END,
  HIGHLIGHT_START,
  type Filters,
  type HitRow,
  type IndexStore,
  type RankerName,
  type Scope,
} from "./store.js";

const DEFAULT_PAGE_SIZE = 10;
const DEFAULT_SUGGESTIONS = 8;
/**
 * Pages reach this deep and no further: relevance pages are offsets into a ranked list, and
 * nobody reads result 1,000; a scraper should not make the database rank that far.
 */
export const MAX_RESULT_OFFSET = 1000;
/** Did-you-mean is offered when a query finds fewer documents than this. */
const FEW_RESULTS = 3;

const documentTypes = enumNames<DocumentType>(DocumentType, "DocumentType");
const rankers: Record<RankerName, Ranker> = {
  bm25: Ranker.BM25,
  ts_rank_cd: Ranker.TS_RANK_CD,
  date: Ranker.DATE,
};

export interface SearchServiceDeps {
  store: IndexStore;
  /** How relevance is ranked here, decided at start. */
  ranker: RelevanceRanker;
  /** Set when the index keeps vectors: relevance fuses the lexical ranker with kNN (RRF). */
  vectors?: VectorLeg;
  reindexer: Reindexer;
  /** Search answers by query, filters, page and visibility scope; bumped on every index change. */
  cache?: { store: VersionedCache; ttlMs: number; namespace: string };
  /** Told about every answered search (search.events). */
  analytics?: { record(r: SearchRecord): void };
  /** The analytics aggregate's database. */
  db: Kysely<SearchDB>;
}

export function scopeOf(caller: Principal): Scope {
  return { subject: caller.subject, admin: caller.role === Role.ADMIN };
}

export function toFilters(f: SearchFilters | undefined): Filters {
  return {
    specialties: f?.specialties ?? [],
    documentTypes: (f?.documentTypes ?? []).map((t) => documentTypes.name(t)),
    journals: f?.journals ?? [],
    authors: f?.authors ?? [],
    entities: f?.entities ?? [],
    publishedAfter: f?.publishedAfter ?? "",
    publishedBefore: f?.publishedBefore ?? "",
  };
}

/** Reads a query, or answers invalid_argument with the reason in a sentence. */
export function readQuery(raw: string, field = "query"): UnderstoodQuery {
  let understood: UnderstoodQuery;
  try {
    understood = understandQuery(raw);
  } catch (err) {
    if (err instanceof QuerySyntaxError) throw invalidArgument([{ field, description: err.message }]);
    throw err;
  }
  if (understood.tsquery === "")
    throw invalidArgument([
      { field, description: "the query has no words to search for (only symbols or exclusions)" },
    ]);
  return understood;
}

/** ts_headline's marked text as plain text and the marked ranges, in code points. */
export function toSnippet(marked: string): { text: string; highlights: Array<{ start: number; end: number }> } {
  let text = "";
  let at = 0;
  let start = -1;
  const highlights: Array<{ start: number; end: number }> = [];
  for (const ch of marked) {
    if (ch === HIGHLIGHT_START) start = at;
    else if (ch === HIGHLIGHT_END) {
      if (start >= 0 && at > start) highlights.push({ start, end: at });
      start = -1;
    } else {
      text += ch;
      at++;
    }
  }
  return { text, highlights };
}

export function toHit(row: HitRow): SearchHit {
  return create(SearchHitSchema, {
    documentId: row.document_id,
    version: row.version,
    title: row.title,
    authors: row.authors,
    journal: row.journal ?? "",
    publicationDate: row.publication_date ?? "",
    documentType: documentTypes.value(row.document_type),
    specialty: row.specialty ?? "",
    visibility: row.visibility === "platform" ? Visibility.PLATFORM : Visibility.PRIVATE,
    score: row.score,
    snippet: toSnippet(row.snippet ?? ""),
  });
}

/** SearchService: thin handlers over the index store. */
export function searchService(deps: SearchServiceDeps): ServiceImpl<typeof SearchService> {
  const { store } = deps;
  const log = logger.child({ component: "search" });

  /** The cached answer and the version to store a fresh one under; undefined when there is no cache or it failed. */
  async function readCache(key: string): Promise<{ version: string; value?: SearchResponse } | undefined> {
    if (!deps.cache) return undefined;
    try {
      const got = await deps.cache.store.get(deps.cache.namespace, key);
      return {
        version: got.version,
        value: got.value === undefined ? undefined : fromBinary(SearchResponseSchema, Buffer.from(got.value, "base64")),
      };
    } catch (err) {
      // A cache that fails is no cache: the database answers.
      log.warn("search cache unavailable", { error: err as Error });
      return undefined;
    }
  }

  async function writeCache(version: string, key: string, answer: SearchResponse): Promise<void> {
    try {
      const bytes = Buffer.from(toBinary(SearchResponseSchema, answer)).toString("base64");
      await deps.cache!.store.set(deps.cache!.namespace, version, key, bytes, deps.cache!.ttlMs);
    } catch (err) {
      log.warn("could not cache a search answer", { error: err as Error });
    }
  }

  async function compute(
    understood: UnderstoodQuery,
    filters: Filters,
    ranker: RankerName,
    scope: Scope,
    pageSize: number,
    offset: number,
    binding: unknown,
  ): Promise<{ answer: SearchResponse; complete: boolean }> {
    let vector: string | undefined;
    let complete = true;
    if (deps.vectors && ranker !== "date") {
      try {
        // The normalized query, not the raw one: answers are cached under it.
        vector = await embedOne(deps.vectors.embedder, understood.normalized);
      } catch (err) {
        // An embedder that fails costs the vector leg, not the answer; vector_leg says so and
        // the answer is not cached.
        log.warn("could not embed the query; answering with the lexical leg only", { error: err as Error });
        complete = false;
      }
    }
    const page = await store.search({
      tsquery: understood.tsquery,
      bm25Text: understood.bm25Text,
      ranker,
      filters,
      scope,
      limit: pageSize,
      offset,
      ...(vector === undefined ? {} : { vector }),
      // Phrases and exclusions are asked for exactly: nothing joins for not matching them.
      ...(vector !== undefined &&
      deps.vectors?.relatedMinSimilarity !== undefined &&
      understood.phrases.length === 0 &&
      understood.excluded.length === 0
        ? { relatedMinSimilarity: deps.vectors.relatedMinSimilarity }
        : {}),
    });
    const next = offset + page.hits.length;
    const didYouMean = page.matched < FEW_RESULTS ? await store.corrections(understood.words, scope) : [];
    let corrected = "";
    if (didYouMean.length > 0) {
      const by = new Map(didYouMean.map((c) => [c.word, c.suggestion]));
      corrected = understood.normalized
        .split(" ")
        .map((w) => by.get(w) ?? w)
        .join(" ");
    }
    const answer = create(SearchResponseSchema, {
      hits: page.hits.map(toHit),
      totalCount: BigInt(page.total),
      matchedCount: BigInt(page.matched),
      totalIsEstimate: page.estimated,
      facets: FACET_FIELDS.map((field) => ({
        field,
        values: page.facets[field].map((v) => ({ value: v.value, count: BigInt(v.count) })),
      })),
      nextPageToken:
        next < page.pageable && next <= MAX_RESULT_OFFSET && page.hits.length > 0 ? encodePageToken(next, binding) : "",
      ranker: rankers[ranker],
      interpretation: {
        normalized: understood.normalized,
        expansions: understood.expansions.map((e) => ({ term: e.term, expandedTo: e.expandedTo })),
        phrases: understood.phrases,
        excluded: understood.excluded,
      },
      didYouMean,
      correctedQuery: corrected,
      vectorLeg: vector !== undefined,
    });
    return { answer, complete };
  }

  return {
    async search(req, ctx) {
      const started = performance.now();
      const caller = callerOf(ctx);
      const understood = readQuery(req.query);
      const filters = toFilters(req.filters);
      const sort = req.sort === SortOrder.DATE ? "date" : "relevance";
      // The token is bound to what it pages through and to whom: reused with another query,
      // other filters, another order or by another caller, it is refused.
      const binding = { q: understood.normalized, f: filters, s: sort, c: caller.subject };
      const offset = decodePageToken(req.pageToken, binding) ?? 0;
      if (offset < 0 || offset > MAX_RESULT_OFFSET)
        throw invalidArgument([{ field: "page_token", description: "is not a token issued by this service" }]);
      const pageSize = req.pageSize || DEFAULT_PAGE_SIZE;
      const ranker: RankerName = sort === "date" ? "date" : deps.ranker;
      const scope = scopeOf(caller);
      // Admins share one scope (they see everything); everyone else sees their own private ones.
      const key = createHash("sha256")
        .update(JSON.stringify([binding.q, filters, sort, offset, pageSize, scope.admin ? "*admin" : scope.subject]))
        .digest("base64url");
      const cached = await readCache(key);
      let answer: SearchResponse;
      if (cached?.value) answer = { ...cached.value, cached: true };
      else {
        const computed = await compute(understood, filters, ranker, scope, pageSize, offset, binding);
        answer = computed.answer;
        if (cached && computed.complete) void writeCache(cached.version, key, answer);
      }
      // Later pages are the same search read further; only first pages count.
      if (offset === 0)
        deps.analytics?.record({
          normalizedQuery: understood.normalized,
          filters: Object.fromEntries(
            Object.entries(filters).filter(([, v]) => (Array.isArray(v) ? v.length > 0 : v !== "")),
          ),
          resultCount: Number(answer.totalCount),
          ranker,
          latencyMs: performance.now() - started,
          subject: caller.subject,
          cached: answer.cached,
        });
      return answer;
    },

    async suggest(req, ctx) {
      const rows = await store.suggest(req.prefix.trim(), scopeOf(callerOf(ctx)), req.limit || DEFAULT_SUGGESTIONS);
      return { suggestions: rows.map((r) => ({ text: r.text, kind: r.kind, documentId: r.document_id ?? "" })) };
    },

    async similarDocuments(req, ctx) {
      const caller = callerOf(ctx);
      const found = await store.similar(req.documentId, scopeOf(caller), req.pageSize || DEFAULT_PAGE_SIZE);
      // A document the caller may not see is reported as missing, like documents does.
      if (!found) throw new ConnectError(`document ${req.documentId} is not in the index`, Code.NotFound);
      return {
        hits: found.hits.map(toHit),
        terms: found.terms,
        ranker: Ranker.TS_RANK_CD,
        vectorLeg: found.vectorLeg,
      };
    },

    async reindex() {
      return deps.reindexer.reindex();
    },

    async getSearchAnalytics(req) {
      const end = req.endTime ? timestampDate(req.endTime) : new Date();
      const start = req.startTime ? timestampDate(req.startTime) : new Date(end.getTime() - 24 * 3_600_000);
      if (start >= end) throw invalidArgument([{ field: "start_time", description: "must be before end_time" }]);
      // Counted per hour: the window is widened to whole hours.
      const hour = 3_600_000;
      const from = new Date(Math.floor(start.getTime() / hour) * hour);
      const to = new Date(Math.ceil(end.getTime() / hour) * hour);
      return readAnalytics(deps.db, from, to, req.limit || 20);
    },
  };
}
