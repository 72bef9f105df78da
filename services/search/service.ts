import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { Role } from "../../gen/medmesh/access/v1/access_pb.js";
import { DocumentType, Visibility } from "../../gen/medmesh/documents/v1/documents_pb.js";
import {
  Ranker,
  SearchHitSchema,
  SortOrder,
  type SearchFilters,
  type SearchHit,
  type SearchService,
} from "../../gen/medmesh/search/v1/search_pb.js";
import { callerOf } from "../../platform/grpc/caller.js";
import { enumNames } from "../../platform/grpc/enum-names.js";
import { invalidArgument } from "../../platform/grpc/errors.js";
import type { Principal } from "../../platform/grpc/interceptors/access.js";
import { decodePageToken, encodePageToken } from "../../platform/grpc/page-token.js";
import { QuerySyntaxError, understandQuery, type UnderstoodQuery } from "./query/understand.js";
import type { RelevanceRanker } from "./ranker.js";
import type { Reindexer } from "./reindex.js";
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
  reindexer: Reindexer;
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
  return {
    async search(req, ctx) {
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
      const page = await store.search({
        tsquery: understood.tsquery,
        bm25Text: understood.bm25Text,
        ranker,
        filters,
        scope: scopeOf(caller),
        limit: pageSize,
        offset,
      });
      const next = offset + page.hits.length;
      const didYouMean = page.total < FEW_RESULTS ? await store.corrections(understood.words) : [];
      let corrected = "";
      if (didYouMean.length > 0) {
        const by = new Map(didYouMean.map((c) => [c.word, c.suggestion]));
        corrected = understood.normalized
          .split(" ")
          .map((w) => by.get(w) ?? w)
          .join(" ");
      }
      return {
        hits: page.hits.map(toHit),
        totalCount: BigInt(page.total),
        facets: FACET_FIELDS.map((field) => ({
          field,
          values: page.facets[field].map((v) => ({ value: v.value, count: BigInt(v.count) })),
        })),
        nextPageToken:
          next < page.total && next <= MAX_RESULT_OFFSET && page.hits.length > 0 ? encodePageToken(next, binding) : "",
        ranker: rankers[ranker],
        interpretation: {
          normalized: understood.normalized,
          expansions: understood.expansions.map((e) => ({ term: e.term, expandedTo: e.expandedTo })),
          phrases: understood.phrases,
          excluded: understood.excluded,
        },
        didYouMean,
        correctedQuery: corrected,
      };
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
      return { hits: found.hits.map(toHit), terms: found.terms, ranker: Ranker.TS_RANK_CD };
    },

    async reindex() {
      return deps.reindexer.reindex();
    },

    async getSearchAnalytics() {
      throw new ConnectError("search analytics are not recorded yet", Code.Unimplemented);
    },
  };
}
