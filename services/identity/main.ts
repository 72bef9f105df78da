import { env, loadConfig, serviceSpec } from "../../platform/config/env.js";
import { components, hostField, portField } from "../../platform/config/components.js";
import { rateLimitSpec, rateLimiting } from "../../platform/grpc/interceptors/rate-limit.js";
import { openServiceDatabase } from "../../platform/db/database.js";
import { meshInterceptors } from "../../platform/grpc/interceptors/index.js";
import { bearerPrincipalResolver } from "../../platform/auth/principal.js";
import type { KeySet } from "../../platform/auth/key-set.js";
import { register, startGrpcServer } from "../../platform/grpc/server.js";
import { isEntryPoint, runMain, type Started } from "../../platform/lifecycle/run-main.js";
import { startComponentTelemetry } from "../../platform/telemetry/sdk.js";
import { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { logger } from "../../platform/telemetry/logger.js";
import { UserRegisteredSchema } from "../../gen/medmesh/events/v1/user_events_pb.js";
import {
  createKafka,
  ensureTopics,
  eventTopic,
  outboxRetentionSpec,
  startEventPruning,
  startOutboxRelay,
  type OutboxRelay,
} from "../../platform/events/index.js";
import { ensureBootstrapKeys, parseBootstrapKeys } from "./bootstrap-keys.js";
import { SigningKeyRing } from "./keys.js";
import { migrations } from "./migrations/index.js";
import type { Deliver } from "./context.js";
import { identityService } from "./service.js";
import { IdentityStore } from "./store.js";
import type { IdentityDB } from "./tables.js";

export const configSpec = {
  ...serviceSpec,
  ...hostField(components.identity, "interface the gRPC server binds"),
  ...portField(components.identity, "gRPC port (0 picks a free one)"),
  IDENTITY_DB_SCHEMA: env.string("schema the service owns", "identity"),
  ...outboxRetentionSpec,
  ...rateLimitSpec,
  IDENTITY_BOOTSTRAP_ADMIN_EMAIL: env.optionalString(
    "the account registered with this address becomes admin while there is no admin",
  ),
  IDENTITY_BOOTSTRAP_API_KEYS: env.parsed(
    "service API keys made sure of at start, as name=key[,name=key] (secret)",
    "",
    parseBootstrapKeys,
  ),
  // 17 is OWASP's minimum for scrypt; 14 stays allowed so the test suites can run cheaply.
  IDENTITY_SCRYPT_LOG_N: env.int("scrypt cost for new password hashes, as log2(N)", 17, 14, 20),
  IDENTITY_SESSION_TTL_HOURS: env.int("how long a session (refresh-token family) lives at most", 720, 1, 8760),
  KAFKA_BROKERS: env.parsed(
    "Kafka brokers (host:port, comma separated) user.events are published to; unset keeps them in the outbox until it is set",
    "",
    (raw) =>
      raw
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean),
  ),
  IDENTITY_KEY_ROTATION_HOURS: env.int(
    "rotate the token signing key once it is this old; 0 never rotates by itself",
    720,
    0,
    87_600,
  ),
};

/** Seams for tests: the clock every expiry is computed with, and where one-time links go. */
export interface IdentityHooks {
  now?: () => Date;
  deliver?: Deliver;
}

export async function startIdentity(
  source: Record<string, string | undefined> = process.env,
  hooks: IdentityHooks = {},
): Promise<Started & { port: number; keys: SigningKeyRing }> {
  const config = loadConfig(configSpec, source);
  const telemetry = startComponentTelemetry("identity", config);
  const database = await openServiceDatabase<IdentityDB>("identity", config, config.IDENTITY_DB_SCHEMA, migrations);
  const now = hooks.now ?? (() => new Date());
  const store = new IdentityStore(database.db);
  const keys = new SigningKeyRing(store, { now, rotateAfterMs: config.IDENTITY_KEY_ROTATION_HOURS * 3600_000 });
  await keys.start();
  // Before the port opens, so a worker holding one of these keys can exchange it from the start.
  await ensureBootstrapKeys(store, config.IDENTITY_BOOTSTRAP_API_KEYS, now());
  const rateLimit = rateLimiting(config);
  // Sign-in and registration never wait for Kafka: events wait in the outbox, and without brokers
  // (identity alone, its tests) they wait there until a start with KAFKA_BROKERS publishes them.
  let relay: OutboxRelay | undefined;
  if (config.KAFKA_BROKERS.length > 0) {
    const kafka = createKafka({ brokers: config.KAFKA_BROKERS, clientId: "identity" });
    // Not a reason to refuse sign-ins: with the broker down the relay keeps retrying, and the
    // topic is made by whichever of identity's later starts or the consumers' reaches it first.
    await ensureTopics(kafka, [{ topic: eventTopic(UserRegisteredSchema), numPartitions: 3 }]).catch((err: Error) =>
      logger.warn("could not make sure user.events exists; the relay retries publishing", { error: err.message }),
    );
    relay = startOutboxRelay({ db: database.db, kafka, wakeLingerMs: 20 });
  }
  const pruning = startEventPruning({
    db: database.db,
    outboxRetentionMs: config.OUTBOX_RETENTION_HOURS * 3_600_000,
  });
  const deadlines = { defaultUnaryMs: config.DEFAULT_DEADLINE_MS, maxUnaryMs: config.MAX_DEADLINE_MS };
  const impl = identityService({
    store,
    keys,
    now,
    deliver: hooks.deliver,
    afterWrite: () => relay?.wake(),
    bootstrapAdminEmail: config.IDENTITY_BOOTSTRAP_ADMIN_EMAIL,
    scrypt: { logN: config.IDENTITY_SCRYPT_LOG_N, r: 8, p: 1 },
    sessionTtlMs: config.IDENTITY_SESSION_TTL_HOURS * 3600_000,
  });
  const server = await startGrpcServer({
    name: "identity",
    host: config.IDENTITY_HOST,
    port: config.IDENTITY_PORT,
    services: [register(IdentityService, impl)],
    // The mesh's one access interceptor admits callers here too, with identity's own key ring as
    // the key set (no network hop) and identity's clock.
    interceptors: meshInterceptors({
      component: "identity",
      resolvePrincipal: bearerPrincipalResolver(ringKeySet(keys), () => now().getTime()),
      // Sign-in is limited here as well as at the gateway: this port is reachable inside the mesh.
      rateLimit,
      // Through the gateway, the client is the address the gateway signed for, not the gateway.
      vouchedAddresses: { secrets: config.MESH_EDGE_SECRET },
    }),
    deadlines,
    maxMessageBytes: config.GRPC_MAX_MESSAGE_BYTES,
    readinessProbe: () => database.ping(),
  });
  return {
    port: server.port,
    keys,
    endpoints: { identity: `grpc://${server.address}` },
    async stop() {
      await rateLimit.limiter.close();
      await server.shutdown(config.SHUTDOWN_GRACE_MS);
      await relay?.stop();
      await pruning.stop();
      await database.close();
      await telemetry.shutdown();
    },
  };
}

/** The ring as the key set the access interceptor verifies against. */
function ringKeySet(keys: SigningKeyRing): KeySet {
  let lastReload = 0;
  return {
    current: () => keys.jwks(),
    async refresh() {
      // Bounded, so tokens with invented kids cannot make every request a database query.
      if (Date.now() - lastReload > 5_000) {
        lastReload = Date.now();
        await keys.reload();
      }
      return keys.jwks();
    },
    close: () => undefined,
  };
}

if (isEntryPoint(import.meta.url)) void runMain("identity", () => startIdentity());
