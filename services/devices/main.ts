import { env, loadConfig, serviceSpec } from "../../platform/config/env.js";
import { components, hostField, portField, targetField } from "../../platform/config/components.js";
import { identityKeySet } from "../../platform/auth/key-set.js";
import { bearerPrincipalResolver } from "../../platform/auth/principal.js";
import { serviceToken } from "../../platform/auth/service-token.js";
import { memoryVersionedCache, redisVersionedCache } from "../../platform/cache/versioned-cache.js";
import { openServiceDatabase } from "../../platform/db/database.js";
import { createKafka, ensureTopics, requiredBrokersSpec } from "../../platform/events/index.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import type { PrincipalResolver } from "../../platform/grpc/interceptors/access.js";
import { meshInterceptors } from "../../platform/grpc/interceptors/index.js";
import { register, startGrpcServer, type RunningGrpcServer } from "../../platform/grpc/server.js";
import { periodicJob } from "../../platform/lifecycle/periodic-job.js";
import { isEntryPoint, runMain, type Started } from "../../platform/lifecycle/run-main.js";
import { logger } from "../../platform/telemetry/logger.js";
import { startComponentTelemetry } from "../../platform/telemetry/sdk.js";
import { DeviceService } from "../../gen/medmesh/devices/v1/devices_pb.js";
import { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { deviceValidationShortcuts } from "./event-rules.js";
import { DEVICE_EVENT, groupCatchUp, Ingest } from "./ingest.js";
import { deviceDecodeShortcuts } from "./request-decoding.js";
import { migrations } from "./migrations/index.js";
import { EventPublisher } from "./publisher.js";
import { deviceService } from "./service.js";
import { StateCache } from "./state-cache.js";
import { DeviceStore } from "./store.js";
import type { DevicesDB } from "./tables.js";
import { startWorker, type Worker } from "./worker.js";

export const configSpec = {
  ...serviceSpec,
  ...hostField(components.devices, "interface the gRPC server binds"),
  ...portField(components.devices, "gRPC port (0 picks a free one)"),
  DEVICES_DB_SCHEMA: env.string("schema the service owns (registry, state, history)", "devices"),
  ...requiredBrokersSpec(`publish ${DEVICE_EVENT.topic} to and consume it from`),
  ...targetField(
    components.identity,
    "where the identity service is (keys that verify tokens; device keys are issued there)",
  ),
  DEVICES_API_KEY: env.string("the devices service's API key (secret), traded with identity for access tokens"),
  DEVICES_GROUP_ID: env.string("Kafka consumer group of the worker that applies device events", "devices-worker"),
  DEVICES_DLQ_TOPIC: env.string("where device events that cannot be applied go", "device.events.dlq"),
  REDIS_URL: env.url("Redis for the device-state cache shared by every replica; unset keeps it in process", [
    "redis:",
    "rediss:",
  ]),
  DEVICES_STATE_CACHE_TTL_MS: env.int("how long a device's state is cached (0: no cache)", 60_000, 0, 24 * 3_600_000),
  DEVICES_STATE_CACHE_ENTRIES: env.int(
    "device states each replica keeps in process (the whole cache without Redis; copies Redis keeps current with it)",
    100_000,
    100,
    10_000_000,
  ),
  DEVICES_NEGATIVE_CACHE_TTL_MS: env.int("how long an unknown device id is remembered as unknown", 5_000, 0, 600_000),
  DEVICES_MAX_BATCH: env.int("events one PublishEvents may carry", 500, 1, 10_000),
  DEVICES_STREAM_MAX_IN_FLIGHT: env.int(
    "unacknowledged events one StreamEvents may have before the server stops reading it",
    1_000,
    1,
    100_000,
  ),
  DEVICES_MAX_EVENT_BYTES: env.bytes("largest event, encoded", 4 * 1024),
  DEVICES_MAX_CLOCK_SKEW_MS: env.int("how far in the future an event's time may be", 300_000, 0, 86_400_000),
  DEVICES_EVENT_RETENTION_HOURS: env.int("how long applied events stay in the history (0: forever)", 720, 0, 87_600),
  DEVICES_MAX_ATTEMPTS: env.int("permanent failures of one event before it is dead-lettered", 3, 1, 10),
  DEVICES_RETRY_BASE_MS: env.int("backoff after failed try n is this times 2^n", 500, 1, 60_000),
  DEVICES_RETRY_MAX_MS: env.int("cap of the random wait between retries of a transient failure", 30_000, 1, 600_000),
};

export interface DevicesHooks {
  /** Replaces token verification; only code can pass this (tests). */
  resolvePrincipal?: PrincipalResolver;
}

export async function startDevices(
  source: Record<string, string | undefined> = process.env,
  hooks: DevicesHooks = {},
): Promise<Started & { port: number; states: StateCache }> {
  const config = loadConfig(configSpec, source);
  const telemetry = startComponentTelemetry("devices", config);
  const log = logger.child({ component: "devices" });
  const database = await openServiceDatabase<DevicesDB>("devices", config, config.DEVICES_DB_SCHEMA, migrations);
  const store = new DeviceStore(database.db, config.DEVICES_DB_SCHEMA);
  const kafka = createKafka({ brokers: config.KAFKA_BROKERS, clientId: "devices" });
  await ensureTopics(kafka, [
    { topic: DEVICE_EVENT.topic, numPartitions: 3 },
    { topic: config.DEVICES_DLQ_TOPIC, numPartitions: 3 },
  ]);
  const admin = kafka.admin();
  await admin.connect();
  const publisher = new EventPublisher({ kafka, topic: DEVICE_EVENT.topic });
  const cache =
    config.DEVICES_STATE_CACHE_TTL_MS === 0
      ? undefined
      : config.REDIS_URL
        ? redisVersionedCache(config.REDIS_URL, { near: { maxEntries: config.DEVICES_STATE_CACHE_ENTRIES } })
        : memoryVersionedCache(config.DEVICES_STATE_CACHE_ENTRIES);
  const states = new StateCache({
    store,
    cache,
    // Per schema: two deployments (or tests) on one Redis never share states.
    namespace: `devices:${config.DEVICES_DB_SCHEMA}`,
    ttlMs: config.DEVICES_STATE_CACHE_TTL_MS,
    negativeTtlMs: config.DEVICES_NEGATIVE_CACHE_TTL_MS,
    // Redis may hang; the in-process map answers at once.
    cacheTimeoutMs: config.REDIS_URL ? 100 : 0,
  });
  const ingest = new Ingest({
    store,
    publisher,
    caughtUp: groupCatchUp(admin, DEVICE_EVENT.topic, config.DEVICES_GROUP_ID),
    maxClockSkewMs: config.DEVICES_MAX_CLOCK_SKEW_MS,
    maxEventBytes: config.DEVICES_MAX_EVENT_BYTES,
  });
  const identity = createMeshClient(IdentityService, config.IDENTITY_TARGET, {
    defaultTimeoutMs: config.DEFAULT_DEADLINE_MS,
    maxMessageBytes: config.GRPC_MAX_MESSAGE_BYTES,
  });
  const token = serviceToken({
    identityTarget: config.IDENTITY_TARGET,
    apiKey: config.DEVICES_API_KEY,
    keyName: "DEVICES_API_KEY",
  });
  const keys = identityKeySet(config.IDENTITY_TARGET);
  const retention = periodicJob(
    async () => {
      if (config.DEVICES_EVENT_RETENTION_HOURS === 0) return 0;
      const before = new Date(Date.now() - config.DEVICES_EVENT_RETENTION_HOURS * 3_600_000);
      let removed = 0;
      for (let n = -1; n !== 0; removed += n) n = await store.pruneEvents(before);
      return removed;
    },
    (err) => log.warn("pruning device history failed", { error: err as Error }),
  );

  let worker: Worker | undefined;
  const closeAll = async () => {
    await worker?.stop();
    await retention.stop();
    await publisher.close();
    await admin.disconnect().catch(() => undefined);
    token.close();
    keys.close();
    identity.close();
    await cache?.close();
    await database.close();
    await telemetry.shutdown();
  };
  let server: RunningGrpcServer;
  try {
    worker = await startWorker({
      kafka,
      store,
      topic: DEVICE_EVENT.topic,
      dlqTopic: config.DEVICES_DLQ_TOPIC,
      groupId: config.DEVICES_GROUP_ID,
      applied: (devices) => {
        for (const d of devices) states.invalidate(d);
      },
      maxAttempts: config.DEVICES_MAX_ATTEMPTS,
      retryBaseMs: config.DEVICES_RETRY_BASE_MS,
      retryMaxMs: config.DEVICES_RETRY_MAX_MS,
    });
    retention.start(3_600_000);
    server = await startGrpcServer({
      name: "devices",
      host: config.DEVICES_HOST,
      port: config.DEVICES_PORT,
      services: [
        register(
          DeviceService,
          deviceService({
            store,
            ingest,
            states,
            identity,
            token,
            maxBatch: config.DEVICES_MAX_BATCH,
            maxInFlight: config.DEVICES_STREAM_MAX_IN_FLIGHT,
          }),
        ),
      ],
      interceptors: meshInterceptors({
        component: "devices",
        resolvePrincipal: hooks.resolvePrincipal ?? bearerPrincipalResolver(keys),
        validationShortcuts: deviceValidationShortcuts,
      }),
      deadlines: { defaultUnaryMs: config.DEFAULT_DEADLINE_MS, maxUnaryMs: config.MAX_DEADLINE_MS },
      maxMessageBytes: config.GRPC_MAX_MESSAGE_BYTES,
      decodeShortcuts: deviceDecodeShortcuts,
      readinessProbe: async () => (worker?.running() ?? false) && (await database.ping()),
    });
  } catch (err) {
    await closeAll();
    throw err;
  }

  return {
    port: server.port,
    states,
    endpoints: { devices: `grpc://${server.address}` },
    async stop() {
      await server.shutdown(config.SHUTDOWN_GRACE_MS);
      await closeAll();
    },
  };
}

if (isEntryPoint(import.meta.url)) void runMain("devices", () => startDevices());
