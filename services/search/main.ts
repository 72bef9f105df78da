import { pg_trgm } from "@electric-sql/pglite/contrib/pg_trgm";
import { pg_textsearch } from "@electric-sql/pglite-pg_textsearch";
import { vector } from "@electric-sql/pglite-pgvector";
import { env, loadConfig, serviceSpec } from "../../platform/config/env.js";
import { components, hostField, portField, targetField } from "../../platform/config/components.js";
import { identityKeySet } from "../../platform/auth/key-set.js";
import { memoryVersionedCache, redisVersionedCache } from "../../platform/cache/versioned-cache.js";
import { bearerPrincipalResolver } from "../../platform/auth/principal.js";
import { serviceToken } from "../../platform/auth/service-token.js";
import { openServiceDatabase } from "../../platform/db/database.js";
import {
  createKafka,
  ensureTopics,
  eventTopic,
  fullJitterBackoff,
  inboxRetentionSpec,
  requiredBrokersSpec,
  outboxRetentionSpec,
  startEventPruning,
  startIdempotentConsumer,
  startOutboxRelay,
  type IdempotentConsumer,
} from "../../platform/events/index.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import type { PrincipalResolver } from "../../platform/grpc/interceptors/access.js";
import { meshInterceptors } from "../../platform/grpc/interceptors/index.js";
import { register, startGrpcServer, type RunningGrpcServer } from "../../platform/grpc/server.js";
import { isEntryPoint, runMain, type Started } from "../../platform/lifecycle/run-main.js";
import { logger } from "../../platform/telemetry/logger.js";
import { startComponentTelemetry } from "../../platform/telemetry/sdk.js";
import { DocumentProcessingService, DocumentService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { DocumentProcessedSchema } from "../../gen/medmesh/events/v1/document_events_pb.js";
import { SearchPerformedSchema } from "../../gen/medmesh/events/v1/search_events_pb.js";
import { SearchService } from "../../gen/medmesh/search/v1/search_pb.js";
import { searchAnalytics, statsConsumer } from "./analytics.js";
import { createEmbedder, embedderConfigSpec, embedderSettings, relatedMinSimilarity } from "./embedding/index.js";
import { indexer } from "./indexer.js";
import { migrations } from "./migrations/index.js";
import { BM25_INDEX, chooseRanker, type RankerSetting } from "./ranker.js";
import { reindexer } from "./reindex.js";
import { searchService } from "./service.js";
import { indexedReporter } from "./status-reporter.js";
import { IndexStore } from "./store.js";
import { chooseVectorLeg, vectorIndexWanted, type VectorIndexSetting } from "./vectors.js";
import type { SearchDB } from "./tables.js";

const DOCUMENT_EVENTS = eventTopic(DocumentProcessedSchema);
const SEARCH_EVENTS = eventTopic(SearchPerformedSchema);
/** How often the embedded database's index statistics are gathered (see startSearch). */
const EMBEDDED_ANALYZE_MS = 10 * 60_000;
/**
 * Document events the indexer handles in one transaction, when that many are waiting: a commit
 * and the index pages an insert touches (the HNSW graph's above all) are paid once per batch.
 * bench/results/pipeline.md has the figures.
 */
const INDEX_BATCH = 32;

export const configSpec = {
  ...serviceSpec,
  ...outboxRetentionSpec,
  ...inboxRetentionSpec,
  ...hostField(components.search, "interface the gRPC server binds"),
  ...portField(components.search, "gRPC port (0 picks a free one)"),
  SEARCH_DB_SCHEMA: env.string("schema the service owns (the index, its inbox and outbox)", "search"),
  ...requiredBrokersSpec(`consume ${DOCUMENT_EVENTS} from and publish to`),
  ...targetField(components.documents, "where the documents service is"),
  ...targetField(
    components.identity,
    "where the identity service is (keys that verify tokens; the API key is exchanged there)",
  ),
  SEARCH_API_KEY: env.string("the search service's API key (secret), traded with identity for access tokens"),
  SEARCH_GROUP_ID: env.string("Kafka consumer group of the indexer", "search-indexer"),
  SEARCH_STATUS_GROUP_ID: env.string(
    "Kafka consumer group that reports indexed versions to documents",
    "search-status",
  ),
  SEARCH_ANALYTICS_GROUP_ID: env.string(
    "Kafka consumer group that counts search.events for GetSearchAnalytics",
    "search-analytics",
  ),
  SEARCH_RANKER: env.oneOf(
    "relevance ranking: auto (BM25 where pg_textsearch loads, else ts_rank_cd), bm25 (required), ts_rank_cd",
    ["auto", "bm25", "ts_rank_cd"] as const,
    "auto",
  ),
  SEARCH_EXACT_MATCH_LIMIT: env.int(
    "above this many matches (the planner's estimate) a search ranks and facets a bounded candidate set and returns an estimated total",
    5000,
    1,
    100_000_000,
  ),
  SEARCH_CANDIDATES: env.int(
    "matches ranked, faceted and paged when a search exceeds SEARCH_EXACT_MATCH_LIMIT, title matches first (pages end there; 1050 or more lets them go as deep as exact ones)",
    2000,
    10,
    1_000_000,
  ),
  ...embedderConfigSpec,
  SEARCH_VECTOR_INDEX: env.oneOf(
    "HNSW index over the vectors: auto (on a PostgreSQL server, or where related documents are on; not on the embedded PGlite, where it is most of indexing's cost), hnsw, none",
    ["auto", "hnsw", "none"] as const,
    "auto",
  ),
  REDIS_URL: env.url("Redis for the search answer cache shared by every replica; unset keeps it in process", [
    "redis:",
    "rediss:",
  ]),
  SEARCH_CACHE_TTL_MS: env.int(
    "how long a search answer is kept (every index change invalidates all of them at once); 0 turns the cache off",
    60_000,
    0,
    24 * 3_600_000,
  ),
  SEARCH_MAX_ATTEMPTS: env.int(
    "permanent failures per event before it goes to the dead-letter topic (transient ones retry without a limit)",
    3,
    1,
    10,
  ),
  SEARCH_RETRY_BASE_MS: env.int("backoff after failed try n is this times 2^n", 1000, 1, 60_000),
  SEARCH_RETRY_MAX_MS: env.int(
    "cap of the jittered backoff between retries of a transient failure (documents down, a deadline)",
    30_000,
    1,
    600_000,
  ),
};

export interface SearchHooks {
  /** Replaces token verification; only code can pass this (tests). */
  resolvePrincipal?: PrincipalResolver;
}

export async function startSearch(
  source: Record<string, string | undefined> = process.env,
  hooks: SearchHooks = {},
): Promise<Started & { port: number; ranker: string; vectorLeg: boolean }> {
  const config = loadConfig(configSpec, source);
  const embedding = embedderSettings(source);
  const relatedFloor = relatedMinSimilarity(source);
  const telemetry = startComponentTelemetry("search", config);
  const log = logger.child({ component: "search" });
  // Without DATABASE_URL search has an embedded database of its own, in this process, with the
  // extensions it needs; see README (why not the shared embedded Postgres).
  const database = await openServiceDatabase<SearchDB>("search", config, config.SEARCH_DB_SCHEMA, migrations, {
    pg_trgm,
    pg_textsearch,
    vector,
  });
  const ranker = await chooseRanker(
    database.db as never,
    config.SEARCH_DB_SCHEMA,
    config.SEARCH_RANKER as RankerSetting,
    log,
  );
  let vectors;
  try {
    const embedder = await createEmbedder(embedding);
    const index = vectorIndexWanted(
      config.SEARCH_VECTOR_INDEX as VectorIndexSetting,
      Boolean(config.DATABASE_URL),
      relatedFloor !== undefined,
    );
    vectors = await chooseVectorLeg(database.db as never, config.SEARCH_DB_SCHEMA, embedder, log, relatedFloor, index);
  } catch (err) {
    await database.close();
    await telemetry.shutdown();
    throw err;
  }
  const store = new IndexStore(
    database.db,
    config.SEARCH_DB_SCHEMA,
    BM25_INDEX,
    vectors !== undefined,
    { exactMatchLimit: config.SEARCH_EXACT_MATCH_LIMIT, candidates: config.SEARCH_CANDIDATES },
    vectors?.indexed ?? true,
  );
  await store
    .boundPendingLists()
    .catch((err: unknown) => log.warn("could not bound the word indexes' pending lists", { error: err as Error }));
  const kafka = createKafka({ brokers: config.KAFKA_BROKERS, clientId: "search" });
  await ensureTopics(kafka, [
    { topic: DOCUMENT_EVENTS, numPartitions: 3 },
    { topic: SEARCH_EVENTS, numPartitions: 3 },
  ]);
  const producer = kafka.producer();
  await producer.connect();
  const analytics = searchAnalytics({ producer, callerKey: config.SEARCH_API_KEY, log });
  const relay = startOutboxRelay({ db: database.db, kafka, wakeLingerMs: 20 });
  const pruning = startEventPruning({
    db: database.db,
    outboxRetentionMs: config.OUTBOX_RETENTION_HOURS * 3_600_000,
    inboxRetentionMs: config.INBOX_RETENTION_HOURS * 3_600_000,
  });
  const clientOptions = {
    defaultTimeoutMs: config.DEFAULT_DEADLINE_MS,
    maxMessageBytes: config.GRPC_MAX_MESSAGE_BYTES,
  };
  const documents = createMeshClient(DocumentService, config.DOCUMENTS_TARGET, clientOptions);
  const processing = createMeshClient(DocumentProcessingService, config.DOCUMENTS_TARGET, clientOptions);
  const token = serviceToken({
    identityTarget: config.IDENTITY_TARGET,
    apiKey: config.SEARCH_API_KEY,
    keyName: "SEARCH_API_KEY",
  });
  const keys = identityKeySet(config.IDENTITY_TARGET);
  const cache =
    config.SEARCH_CACHE_TTL_MS === 0
      ? undefined
      : config.REDIS_URL
        ? redisVersionedCache(config.REDIS_URL)
        : memoryVersionedCache();
  // Per schema: two indexes on one Redis (tests, staging beside production) never share answers.
  const cacheNamespace = `search:${config.SEARCH_DB_SCHEMA}`;
  // After every committed change to the index: the cached answers may all be wrong now.
  const invalidate = () =>
    void cache
      ?.bump(cacheNamespace)
      .catch((err: Error) => log.warn("could not invalidate the search cache", { error: err }));
  const indexing = indexer({ documents, token, store, vectors });
  const reporter = indexedReporter({ processing, token });
  const reindex = reindexer({
    db: database.db,
    documents,
    token,
    store,
    indexing,
    afterWrite: () => (relay.wake(), invalidate()),
  });

  // PGlite has no autovacuum: without statistics the planner guesses 0.5% of rows for any word,
  // so every search would take the exact shape. The proportions change slowly; a statistics
  // pass now and then keeps the estimate (and the shape chosen from it) honest.
  let analyzing: NodeJS.Timeout | undefined;
  if (database.kind === "pglite") {
    const analyze = () =>
      store.analyze().catch((err: unknown) => log.warn("could not analyze the index", { error: err as Error }));
    void analyze();
    analyzing = setInterval(analyze, EMBEDDED_ANALYZE_MS);
    analyzing.unref();
  }

  const consumers: IdempotentConsumer[] = [];
  const closeAll = async () => {
    clearInterval(analyzing);
    for (const c of consumers) await c.stop();
    await relay.stop();
    await pruning.stop();
    await producer.disconnect();
    token.close();
    keys.close();
    await cache?.close();
    documents.close();
    processing.close();
    await database.close();
    await telemetry.shutdown();
  };
  const retries = {
    maxAttempts: config.SEARCH_MAX_ATTEMPTS,
    backoffMs: (n: number) => config.SEARCH_RETRY_BASE_MS * 2 ** n,
    transientBackoffMs: fullJitterBackoff(config.SEARCH_RETRY_BASE_MS, config.SEARCH_RETRY_MAX_MS),
  };
  let server: RunningGrpcServer;
  try {
    consumers.push(
      await startIdempotentConsumer<SearchDB, Awaited<ReturnType<typeof indexing.prepare>>>({
        kafka,
        groupId: config.SEARCH_GROUP_ID,
        topics: [DOCUMENT_EVENTS],
        db: database.db,
        acceptsType: (type) => indexing.handles({ type }),
        prepare: indexing.prepare,
        prepareBatch: indexing.prepareBatch,
        handler: indexing.handler,
        batchSize: INDEX_BATCH,
        afterCommit: () => (relay.wake(), invalidate()),
        ...retries,
        partitionsConsumedConcurrently: 3,
      }),
    );
    consumers.push(
      await startIdempotentConsumer<SearchDB, undefined>({
        kafka,
        groupId: config.SEARCH_STATUS_GROUP_ID,
        topics: [DOCUMENT_EVENTS],
        db: database.db,
        // Most events on the topic are not DocumentIndexed: passed over by their type header.
        acceptsType: (type) => reporter.handles({ type }),
        prepare: reporter.prepare,
        outboxEffect: reporter.outboxEffect,
        checkInboxBeforePrepare: reporter.checkInboxBeforePrepare,
        ...retries,
        partitionsConsumedConcurrently: 3,
      }),
    );
    consumers.push(
      await startIdempotentConsumer<SearchDB, undefined>({
        kafka,
        groupId: config.SEARCH_ANALYTICS_GROUP_ID,
        topics: [SEARCH_EVENTS],
        db: database.db,
        accepts: statsConsumer.handles,
        handler: statsConsumer.handler,
        ...retries,
      }),
    );
    server = await startGrpcServer({
      name: "search",
      host: config.SEARCH_HOST,
      port: config.SEARCH_PORT,
      services: [
        register(
          SearchService,
          searchService({
            store,
            ranker,
            vectors,
            reindexer: reindex,
            analytics,
            db: database.db,
            cache: cache && { store: cache, ttlMs: config.SEARCH_CACHE_TTL_MS, namespace: cacheNamespace },
          }),
        ),
      ],
      interceptors: meshInterceptors({
        component: "search",
        resolvePrincipal: hooks.resolvePrincipal ?? bearerPrincipalResolver(keys),
      }),
      deadlines: { defaultUnaryMs: config.DEFAULT_DEADLINE_MS, maxUnaryMs: config.MAX_DEADLINE_MS },
      maxMessageBytes: config.GRPC_MAX_MESSAGE_BYTES,
      readinessProbe: async () => consumers.every((c) => c.running()) && (await database.ping()),
    });
  } catch (err) {
    await closeAll();
    throw err;
  }

  return {
    port: server.port,
    ranker,
    vectorLeg: vectors !== undefined,
    endpoints: { search: `grpc://${server.address}` },
    async stop() {
      await server.shutdown(config.SHUTDOWN_GRACE_MS);
      await closeAll();
    },
  };
}

if (isEntryPoint(import.meta.url)) void runMain("search", () => startSearch());
