import { env, loadConfig, serviceSpec } from "../../platform/config/env.js";
import { components, hostField, portField, targetField } from "../../platform/config/components.js";
import { serviceToken } from "../../platform/auth/service-token.js";
import { openServiceDatabase } from "../../platform/db/database.js";
import {
  createKafka,
  deadLetterTopic,
  ensureTopics,
  fullJitterBackoff,
  inboxRetentionSpec,
  requiredBrokersSpec,
  outboxRetentionSpec,
  startEventPruning,
  eventTopic,
  startIdempotentConsumer,
  startOutboxRelay,
  type IdempotentConsumer,
} from "../../platform/events/index.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { startGrpcServer, type RunningGrpcServer } from "../../platform/grpc/server.js";
import { isEntryPoint, runMain, type Started } from "../../platform/lifecycle/run-main.js";
import { startComponentTelemetry } from "../../platform/telemetry/sdk.js";
import { DocumentProcessingService, DocumentService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { DocumentUploadedSchema } from "../../gen/medmesh/events/v1/document_events_pb.js";
import { startAnalysisPool } from "./analysis.js";
import { migrations } from "./migrations/index.js";
import { processingWorker, type ProcessingDB, type ProcessingHooks } from "./worker.js";

// The topic the worker consumes (uploads) is the one it answers on (processed, failed).
const DOCUMENT_EVENTS = eventTopic(DocumentUploadedSchema);

export const configSpec = {
  ...serviceSpec,
  ...outboxRetentionSpec,
  ...inboxRetentionSpec,
  ...hostField(components.processing, "interface the health server binds"),
  ...portField(components.processing, "port of the health server (grpc.health.v1 and reflection; 0 picks a free one)"),
  PROCESSING_DB_SCHEMA: env.string("schema the worker owns (its inbox and outbox)", "processing"),
  ...requiredBrokersSpec(`consume ${DOCUMENT_EVENTS} from and publish to`),
  ...targetField(components.documents, "where the documents service is"),
  ...targetField(components.identity, "where the identity service is (the API key is exchanged there)"),
  PROCESSING_API_KEY: env.string("the worker's service API key (secret), traded with identity for access tokens"),
  PROCESSING_GROUP_ID: env.string("Kafka consumer group", "processing"),
  PROCESSING_CONCURRENCY: env.int("partitions handled at once, and analysis threads", 3, 1, 64),
  PROCESSING_MAX_ATTEMPTS: env.int(
    "permanent failures per event before it goes to the dead-letter topic (transient ones retry without a limit)",
    3,
    1,
    10,
  ),
  PROCESSING_RETRY_BASE_MS: env.int("backoff after failed try n is this times 2^n", 1000, 1, 60_000),
  PROCESSING_RETRY_MAX_MS: env.int(
    "cap of the jittered backoff between retries of a transient failure (documents down, a deadline)",
    30_000,
    1,
    600_000,
  ),
  PROCESSING_SESSION_TIMEOUT_MS: env.int(
    "a worker silent this long is dropped from the group and its partitions go to the others",
    10_000,
    1000,
    300_000,
  ),
  PROCESSING_DLQ_TOPIC: env.string(`dead-letter topic for ${DOCUMENT_EVENTS}`, deadLetterTopic(DOCUMENT_EVENTS)),
  PROCESSING_MAX_BYTES: env.bytes("larger versions fail as too_large without being read", 100 * 1024 * 1024),
  PROCESSING_ANALYSIS_TIMEOUT_MS: env.int(
    "a document still being analysed after this long is stopped (the try fails)",
    60_000,
    100,
    3_600_000,
  ),
  PROCESSING_ANALYSIS_MAX_HEAP_MB: env.int(
    "JavaScript heap of each analysis thread, in MiB; a document needing more fails the try",
    512,
    64,
    16_384,
  ),
};

export async function startProcessing(
  source: Record<string, string | undefined> = process.env,
  hooks: ProcessingHooks = {},
): Promise<Started & { port: number }> {
  const config = loadConfig(configSpec, source);
  const telemetry = startComponentTelemetry("processing", config);
  const database = await openServiceDatabase<ProcessingDB>(
    "processing",
    config,
    config.PROCESSING_DB_SCHEMA,
    migrations,
  );
  const kafka = createKafka({ brokers: config.KAFKA_BROKERS, clientId: "processing" });
  // The worker both reads and writes the topic; creating it here (as documents does) means
  // neither needs the other to have started first.
  await ensureTopics(kafka, [{ topic: DOCUMENT_EVENTS, numPartitions: 3 }]);
  // Under a stream of events a linger lets several go out per claim, Kafka send and mark: each
  // batch costs two statements and a send whatever its size. 100 ms delays only the processed and
  // failed events: the document's own status moved already, in RecordProcessingResult.
  const relay = startOutboxRelay({ db: database.db, kafka, wakeLingerMs: 100 });
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
    apiKey: config.PROCESSING_API_KEY,
    keyName: "PROCESSING_API_KEY",
  });
  const analysis = startAnalysisPool({
    size: config.PROCESSING_CONCURRENCY,
    timeoutMs: config.PROCESSING_ANALYSIS_TIMEOUT_MS,
    maxBytes: config.PROCESSING_MAX_BYTES,
    maxHeapMb: config.PROCESSING_ANALYSIS_MAX_HEAP_MB,
  });
  const worker = processingWorker({
    documents,
    processing,
    token,
    analysis,
    maxAttempts: config.PROCESSING_MAX_ATTEMPTS,
    maxBytes: config.PROCESSING_MAX_BYTES,
    maxMessageBytes: config.GRPC_MAX_MESSAGE_BYTES,
    readTimeoutMs: config.MAX_DEADLINE_MS,
    hooks,
  });

  const closeClients = () => {
    token.close();
    documents.close();
    processing.close();
  };
  const closeAll = async (consumer?: IdempotentConsumer) => {
    await consumer?.stop();
    await relay.stop();
    await pruning.stop();
    await analysis.close();
    closeClients();
    await database.close();
    await telemetry.shutdown();
  };
  let consumer: IdempotentConsumer;
  try {
    consumer = await startIdempotentConsumer<ProcessingDB, Awaited<ReturnType<typeof worker.prepare>>>({
      kafka,
      groupId: config.PROCESSING_GROUP_ID,
      topics: [DOCUMENT_EVENTS],
      db: database.db,
      accepts: worker.handles,
      prepare: worker.prepare,
      // StartProcessing answers a redelivered version with its recorded outcome, in the one round
      // trip the worker makes anyway; an inbox look first would only add one per event.
      checkInboxBeforePrepare: false,
      outboxEffect: worker.outboxEffect,
      afterCommit: () => relay.wake(),
      maxAttempts: config.PROCESSING_MAX_ATTEMPTS,
      backoffMs: (n) => config.PROCESSING_RETRY_BASE_MS * 2 ** n,
      transientBackoffMs: fullJitterBackoff(config.PROCESSING_RETRY_BASE_MS, config.PROCESSING_RETRY_MAX_MS),
      dlqTopic: () => config.PROCESSING_DLQ_TOPIC,
      partitionsConsumedConcurrently: config.PROCESSING_CONCURRENCY,
      // Shorter than kafkajs' 30 s: a crashed worker's partitions stall until its session
      // expires, and documents should not sit that long behind a dead pod.
      consumerConfig: {
        sessionTimeout: config.PROCESSING_SESSION_TIMEOUT_MS,
        heartbeatInterval: Math.max(100, Math.floor(config.PROCESSING_SESSION_TIMEOUT_MS / 10)),
      },
    });
  } catch (err) {
    await closeAll();
    throw err;
  }

  // Health only: probes and operators ask whether the worker can work, nothing else is served.
  let server: RunningGrpcServer;
  try {
    server = await startGrpcServer({
      name: "processing",
      host: config.PROCESSING_HOST,
      port: config.PROCESSING_PORT,
      services: [],
      interceptors: [],
      maxMessageBytes: config.GRPC_MAX_MESSAGE_BYTES,
      readinessProbe: async () => consumer.running() && (await database.ping()),
    });
  } catch (err) {
    await closeAll(consumer);
    throw err;
  }

  return {
    port: server.port,
    endpoints: { processing: `grpc://${server.address}` },
    async stop() {
      // NOT_SERVING first; then the message in hand is finished and its offset committed, and
      // the events it produced are published before the connections close.
      await server.shutdown(config.SHUTDOWN_GRACE_MS);
      await closeAll(consumer);
    },
  };
}

if (isEntryPoint(import.meta.url)) void runMain("processing", () => startProcessing());
