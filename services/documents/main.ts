import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { FsBlobStore } from "../../platform/blobs/index.js";
import { env, loadConfig, serviceSpec } from "../../platform/config/env.js";
import { components, hostField, portField, targetField } from "../../platform/config/components.js";
import { openServiceDatabase } from "../../platform/db/database.js";
import { meshInterceptors } from "../../platform/grpc/interceptors/index.js";
import { register, startGrpcServer } from "../../platform/grpc/server.js";
import { isEntryPoint, runMain, type Started } from "../../platform/lifecycle/run-main.js";
import { startComponentTelemetry } from "../../platform/telemetry/sdk.js";
import { DocumentProcessingService, DocumentService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { migrations } from "./migrations/index.js";
import { identityKeySet } from "../../platform/auth/key-set.js";
import { bearerPrincipalResolver } from "../../platform/auth/principal.js";
import type { PrincipalResolver } from "../../platform/grpc/interceptors/access.js";
import { DocumentUploadedSchema } from "../../gen/medmesh/events/v1/document_events_pb.js";
import { OutcomeStore } from "./outcome-store.js";
import { processingReconciler, type Reconciler } from "./reconciler.js";
import type { ResumableUploadOptions } from "./resumable-upload.js";
import { documentService } from "./service.js";
import { queryCounter } from "./query-counter.js";
import { StatusFeed, type FeedStats } from "./status-feed.js";
import { StatusWriter } from "./status-writer.js";
import { DocumentStore } from "./store.js";
import type { DocumentsDB } from "./tables.js";
import { UploadSessionStore } from "./upload-sessions.js";
import { UploadStaging } from "./upload-staging.js";
import { uploadSweeper, type UploadSweeper } from "./upload-sweeper.js";
import { workerReportsService } from "./worker-reports.js";
import {
  createKafka,
  ensureTopics,
  outboxRetentionSpec,
  eventTopic,
  startEventPruning,
  startOutboxRelay,
  type OutboxRelay,
} from "../../platform/events/index.js";

export const configSpec = {
  ...serviceSpec,
  ...outboxRetentionSpec,
  ...hostField(components.documents, "interface the gRPC server binds"),
  ...portField(components.documents, "gRPC port (0 picks a free one)"),
  DOCUMENTS_DB_SCHEMA: env.string("schema the service owns", "documents"),
  KAFKA_BROKERS: env.list(
    "Kafka brokers (host:port, comma separated) the outbox publishes to; unset keeps events in the outbox",
    [],
  ),
  BLOB_DIR: env.optionalString("where uploaded files are stored; default MEDMESH_DATA_DIR/blobs"),
  UPLOAD_MAX_BYTES: env.bytes("largest file an upload may carry", 100 * 1024 * 1024),
  UPLOAD_SESSION_TTL_MS: env.int(
    "a resumable upload nobody touches for this long expires and its bytes are removed",
    24 * 3600_000,
    1000,
    30 * 24 * 3600_000,
  ),
  DOCUMENTS_RECONCILE_INTERVAL_MS: env.int(
    "how often documents looks for versions stuck without a processing outcome (0: never; needs KAFKA_BROKERS)",
    60_000,
    0,
    24 * 3600_000,
  ),
  DOCUMENTS_STUCK_AFTER_MS: env.int(
    "a version UPLOADED or PROCESSING with no outcome and no sign of life for this long is sent to processing again",
    10 * 60_000,
    100,
    7 * 24 * 3600_000,
  ),
  DOCUMENTS_MAX_REDRIVES: env.int(
    "re-drives a worker took up without an outcome before the version is marked FAILED (processing_error)",
    3,
    1,
    100,
  ),
  UPLOAD_MAX_OPEN_SESSIONS: env.int("resumable uploads one user may have open at once", 20, 1, 10_000),
  UPLOAD_MAX_OPEN_BYTES: env.bytes("bytes one user's open resumable uploads may announce together", 2 * 1024 ** 3),
  UPLOAD_MAX_STREAMS: env.int("streamed Upload calls one user may have at once on one replica", 4, 1, 1000),
  WATCH_POLL_MS: env.int("how often this replica looks for changes made by other replicas", 1000, 50, 60_000),
  DOCUMENTS_WATCH_UNTIL_INDEXED: env.oneOf(
    "whether WatchDocument goes on past PROCESSED until search reports INDEXED (set where search runs)",
    ["true", "false"] as const,
    "false",
  ),
  WATCH_MAX_PER_USER: env.int("WatchDocument streams one user may have open at once on one replica", 16, 1, 10_000),
  ...targetField(components.identity, "where the identity service publishes the keys that verify access tokens"),
};

export interface DocumentsHooks {
  /** Replaces token verification; only code can pass this (benchmarks measure what it costs). */
  resolvePrincipal?: PrincipalResolver;
  /** How often expired uploads are swept; 0 leaves it to the caller of `sweepUploads` (tests). */
  uploadSweepIntervalMs?: number;
  /** Called as each SQL statement of the service's handlers is sent (tests count them). */
  onQuery?: () => void;
}

export async function startDocuments(
  source: Record<string, string | undefined> = process.env,
  hooks: DocumentsHooks = {},
): Promise<
  Started & {
    port: number;
    sweepUploads: UploadSweeper["sweep"];
    watchFeed: () => FeedStats;
    reconcile: Reconciler["reconcile"];
  }
> {
  const config = loadConfig(configSpec, source);
  const telemetry = startComponentTelemetry("documents", config);
  const database = await openServiceDatabase<DocumentsDB>("documents", config, config.DOCUMENTS_DB_SCHEMA, migrations);
  const db = hooks.onQuery ? database.db.withPlugin(queryCounter(hooks.onQuery)) : database.db;
  // Tokens are verified here too, not only at the gateway: services are reachable inside the mesh.
  const keys = identityKeySet(config.IDENTITY_TARGET);
  // Events wait in the outbox table until a relay publishes them; without brokers they simply wait.
  let relay: OutboxRelay | undefined;
  if (config.KAFKA_BROKERS.length > 0) {
    const kafka = createKafka({ brokers: config.KAFKA_BROKERS, clientId: "documents" });
    await ensureTopics(kafka, [{ topic: eventTopic(DocumentUploadedSchema), numPartitions: 3 }]);
    // Under a stream of events a short linger lets several go out per claim and Kafka send; 20 ms
    // is nothing next to a document's trip through the pipeline.
    relay = startOutboxRelay({ db: database.db, kafka, wakeLingerMs: 20 });
  }
  const pruning = startEventPruning({ db: database.db, outboxRetentionMs: config.OUTBOX_RETENTION_HOURS * 3_600_000 });
  const blobDir = blobRoot(config.BLOB_DIR, config.MEDMESH_DATA_DIR);
  const blobs = new FsBlobStore({ root: blobDir, maxBytes: config.UPLOAD_MAX_BYTES });
  // Staging beside the blobs keeps unfinished uploads on the volume that is sized for files.
  const resumable: ResumableUploadOptions = {
    sessions: new UploadSessionStore(db),
    staging: new UploadStaging(path.join(blobDir, "uploads")),
    sessionTtlMs: config.UPLOAD_SESSION_TTL_MS,
    perUser: { sessions: config.UPLOAD_MAX_OPEN_SESSIONS, bytes: config.UPLOAD_MAX_OPEN_BYTES },
  };
  const uploads = uploadSweeper(resumable);
  // Before serving: staging files a crash left without their session go now, not a TTL later.
  await uploads.sweep();
  uploads.start(hooks.uploadSweepIntervalMs ?? Math.min(config.UPLOAD_SESSION_TTL_MS / 4, 60_000));
  const feed = new StatusFeed(db, config.WATCH_POLL_MS);
  const status = new StatusWriter(db, feed);
  const store = new DocumentStore(db, status);
  const outcomes = new OutcomeStore(db, status);
  // Re-driving only means something when a relay publishes what it writes.
  const reconciler = processingReconciler({
    status,
    stuckAfterMs: config.DOCUMENTS_STUCK_AFTER_MS,
    maxRedrives: config.DOCUMENTS_MAX_REDRIVES,
    onRedrive: () => relay?.wake(),
  });
  if (relay) reconciler.start(config.DOCUMENTS_RECONCILE_INTERVAL_MS);
  const deadlines = { defaultUnaryMs: config.DEFAULT_DEADLINE_MS, maxUnaryMs: config.MAX_DEADLINE_MS };
  const server = await startGrpcServer({
    name: "documents",
    host: config.DOCUMENTS_HOST,
    port: config.DOCUMENTS_PORT,
    services: [
      register(
        DocumentService,
        documentService({
          store,
          outcomes,
          feed,
          content: { blobs, maxUploadBytes: config.UPLOAD_MAX_BYTES, onEvent: () => relay?.wake() },
          resumable,
          perUser: { watches: config.WATCH_MAX_PER_USER, uploadStreams: config.UPLOAD_MAX_STREAMS },
          watchUntilIndexed: config.DOCUMENTS_WATCH_UNTIL_INDEXED === "true",
        }),
      ),
      register(DocumentProcessingService, workerReportsService(outcomes, blobs, status)),
    ],
    interceptors: meshInterceptors({
      component: "documents",
      resolvePrincipal: hooks.resolvePrincipal ?? bearerPrincipalResolver(keys),
    }),
    deadlines,
    maxMessageBytes: config.GRPC_MAX_MESSAGE_BYTES,
    readinessProbe: () => database.ping(),
  });
  return {
    port: server.port,
    endpoints: { documents: `grpc://${server.address}` },
    sweepUploads: () => uploads.sweep(),
    watchFeed: () => feed.stats(),
    reconcile: () => reconciler.reconcile(),
    async stop() {
      await server.shutdown(config.SHUTDOWN_GRACE_MS);
      await feed.stop();
      await uploads.stop();
      await reconciler.stop();
      keys.close();
      await relay?.stop();
      await pruning.stop();
      await database.close();
      await telemetry.shutdown();
    },
  };
}

/** BLOB_DIR, else beside the other embedded data; in-memory runs get a throwaway directory. */
function blobRoot(blobDir: string | undefined, dataDir: string): string {
  if (blobDir) return blobDir;
  if (dataDir === "memory://") return mkdtempSync(path.join(os.tmpdir(), "medmesh-blobs-"));
  return path.join(dataDir, "blobs");
}

if (isEntryPoint(import.meta.url)) void runMain("documents", () => startDocuments());
