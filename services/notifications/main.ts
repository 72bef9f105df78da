import type { Agent } from "node:https";
import nodemailer from "nodemailer";
import { env, loadConfig, serviceSpec } from "../../platform/config/env.js";
import { components, hostField, portField, targetField } from "../../platform/config/components.js";
import { identityKeySet } from "../../platform/auth/key-set.js";
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
  startEventPruning,
  startIdempotentConsumer,
  type EventEnvelope,
  type IdempotentConsumer,
} from "../../platform/events/index.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import type { PrincipalResolver } from "../../platform/grpc/interceptors/access.js";
import { meshInterceptors } from "../../platform/grpc/interceptors/index.js";
import { register, startGrpcServer, type RunningGrpcServer } from "../../platform/grpc/server.js";
import { periodicJob } from "../../platform/lifecycle/periodic-job.js";
import { isEntryPoint, runMain, type Started } from "../../platform/lifecycle/run-main.js";
import { logger } from "../../platform/telemetry/logger.js";
import { startComponentTelemetry } from "../../platform/telemetry/sdk.js";
import { DocumentService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { DocumentProcessedSchema } from "../../gen/medmesh/events/v1/document_events_pb.js";
import { UserRegisteredSchema } from "../../gen/medmesh/events/v1/user_events_pb.js";
import { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { NotificationService } from "../../gen/medmesh/notifications/v1/notifications_pb.js";
import { announcer } from "./announcements.js";
import { recipientBackfill } from "./recipient-backfill.js";
import { BUILT_IN, TYPES, VARIABLES } from "./catalog.js";
import { toNotificationsSharing } from "./encoding.js";
import { documentNotifier, userNotifier } from "./events.js";
import { Feed, inProcessBus, redisBus } from "./feed.js";
import { migrations } from "./migrations/index.js";
import { toNotification } from "./model.js";
import { plan } from "./planner.js";
import { pushSender, vapidKeys } from "./push.js";
import { deliverySender } from "./sender.js";
import { notificationService } from "./service.js";
import { NotificationStore } from "./store.js";
import type { NotificationRow, NotificationsDB } from "./tables.js";

const DOCUMENT_EVENTS = eventTopic(DocumentProcessedSchema);
const USER_EVENTS = eventTopic(UserRegisteredSchema);

export const configSpec = {
  ...serviceSpec,
  ...inboxRetentionSpec,
  ...hostField(components.notifications, "interface the gRPC server binds"),
  ...portField(components.notifications, "gRPC port (0 picks a free one)"),
  NOTIFICATIONS_DB_SCHEMA: env.string("schema the service owns", "notifications"),
  ...requiredBrokersSpec(`consume ${DOCUMENT_EVENTS} and ${USER_EVENTS} from`),
  ...targetField(components.documents, "where the documents service is (titles and uploaders of documents)"),
  ...targetField(components.identity, "where the identity service is (token keys, account links)"),
  NOTIFICATIONS_API_KEY: env.string(
    "the notifications service's API key (secret), traded with identity for access tokens",
  ),
  NOTIFICATIONS_GROUP_ID: env.string(
    "prefix of the Kafka consumer groups (<prefix>-documents, <prefix>-users)",
    "notifications",
  ),
  REDIS_URL: env.url("Redis whose pub/sub carries new notifications to every replica; unset keeps them in process", [
    "redis:",
    "rediss:",
  ]),
  SMTP_URL: env.string(
    "SMTP server mail is sent through (smtp:// or smtps://, credentials in the URL)",
    "smtp://127.0.0.1:2525",
  ),
  MAIL_FROM: env.string("From: address of every message", "medmesh <no-reply@medmesh.local>"),
  PUBLIC_URL: env.string("the console's address, for links in messages", "http://127.0.0.1:8080"),
  VAPID_PUBLIC_KEY: env.optionalString("Web Push VAPID public key (base64url); unset: a pair kept under the data dir"),
  VAPID_PRIVATE_KEY: env.optionalString("Web Push VAPID private key (secret), with VAPID_PUBLIC_KEY"),
  VAPID_SUBJECT: env.string("contact for push services (mailto: or https:)", "mailto:admin@medmesh.local"),
  NOTIFICATIONS_POLL_MS: env.int("how often due deliveries and announcements are looked for", 1000, 10, 60_000),
  NOTIFICATIONS_RETRY_BASE_MS: env.int(
    "first backoff of a delivery that failed transiently (doubles per try)",
    2000,
    1,
    600_000,
  ),
  NOTIFICATIONS_RETRY_MAX_MS: env.int(
    "longest backoff between delivery tries (no limit on tries)",
    15 * 60_000,
    1,
    86_400_000,
  ),
};

export interface NotificationsHooks {
  resolvePrincipal?: PrincipalResolver;
  /** The HTTPS agent pushes go through; tests pass one trusting their push service's certificate. */
  pushAgent?: Agent;
}

export async function startNotifications(
  source: Record<string, string | undefined> = process.env,
  hooks: NotificationsHooks = {},
): Promise<
  Started & {
    port: number;
    feed: Feed;
    runDeliveries(): Promise<number>;
    runAnnouncements(): Promise<number>;
    runRecipientBackfill(): Promise<number>;
  }
> {
  const config = loadConfig(configSpec, source);
  const telemetry = startComponentTelemetry("notifications", config);
  const log = logger.child({ component: "notifications" });
  const vapid = vapidKeys(
    { publicKey: config.VAPID_PUBLIC_KEY, privateKey: config.VAPID_PRIVATE_KEY },
    config.MEDMESH_DATA_DIR,
  );
  const database = await openServiceDatabase<NotificationsDB>(
    "notifications",
    config,
    config.NOTIFICATIONS_DB_SCHEMA,
    migrations,
  );
  const db = database.db;
  const store = new NotificationStore(db, config.NOTIFICATIONS_DB_SCHEMA);
  await store.seedTemplates(
    TYPES.map((type) => ({
      type,
      subject: BUILT_IN[type].subject,
      html_body: BUILT_IN[type].html,
      text_body: BUILT_IN[type].text,
      variables: Object.keys(VARIABLES[type]),
      created_by: "built-in",
    })),
  );
  const bus = config.REDIS_URL
    ? redisBus(config.REDIS_URL, `medmesh:notifications:${config.NOTIFICATIONS_DB_SCHEMA}`)
    : inProcessBus();
  const feed = new Feed(store, bus);
  await feed.start();
  const announce = (rows: NotificationRow[]) => {
    const notifications = toNotificationsSharing(rows);
    for (let i = 0; i < rows.length; i++) feed.announce(notifications[i]!, rows[i]!.user_id);
  };
  const clientOptions = {
    defaultTimeoutMs: config.DEFAULT_DEADLINE_MS,
    maxMessageBytes: config.GRPC_MAX_MESSAGE_BYTES,
  };
  const documents = createMeshClient(DocumentService, config.DOCUMENTS_TARGET, clientOptions);
  const identity = createMeshClient(IdentityService, config.IDENTITY_TARGET, clientOptions);
  const token = serviceToken({
    identityTarget: config.IDENTITY_TARGET,
    apiKey: config.NOTIFICATIONS_API_KEY,
    keyName: "NOTIFICATIONS_API_KEY",
  });
  const keys = identityKeySet(config.IDENTITY_TARGET);
  // Pooled, so a burst of mail reuses connections; a down server fails each send fast and the
  // delivery is retried later.
  const mail = nodemailer.createTransport(config.SMTP_URL, {
    pool: true,
    maxConnections: 4,
    connectionTimeout: 10_000,
    greetingTimeout: 10_000,
    socketTimeout: 30_000,
  } as never);
  const sender = deliverySender({
    store,
    mail,
    from: config.MAIL_FROM,
    identity,
    token,
    push: pushSender(vapid, config.VAPID_SUBJECT, hooks.pushAgent),
    publicUrl: config.PUBLIC_URL.replace(/\/+$/, ""),
    retryBaseMs: config.NOTIFICATIONS_RETRY_BASE_MS,
    retryMaxMs: config.NOTIFICATIONS_RETRY_MAX_MS,
    log,
  });
  const onFailure = (what: string) => (err: unknown) =>
    log.warn(`${what} failed; next round retries`, { error: err as Error });
  // Drains everything due before it returns, so one wake-up after a burst sends the burst.
  const deliveries = periodicJob(async () => {
    let total = 0;
    for (let n = await sender.runOnce(); n > 0; n = await sender.runOnce()) total += n;
    return total;
  }, onFailure("sending deliveries"));
  const wakeDeliveries = () => void deliveries.run().catch(onFailure("sending deliveries"));
  const announcements = periodicJob(
    announcer({ db, store, announce, afterWrite: wakeDeliveries, log }),
    onFailure("sending announcements"),
  );
  // Until it has run once to the end: at start, then every 30 s while identity cannot answer.
  const backfill = periodicJob(
    recipientBackfill({ db, store, identity, token, log }),
    onFailure("copying accounts from identity"),
  );
  const pruning = startEventPruning({ db, inboxRetentionMs: config.INBOX_RETENTION_HOURS * 3_600_000 });

  const kafka = createKafka({ brokers: config.KAFKA_BROKERS, clientId: "notifications" });
  const consumers: IdempotentConsumer[] = [];
  const closeAll = async () => {
    for (const c of consumers) await c.stop();
    await deliveries.stop();
    await announcements.stop();
    await backfill.stop();
    await pruning.stop();
    await feed.close();
    mail.close();
    token.close();
    keys.close();
    documents.close();
    identity.close();
    await database.close();
    await telemetry.shutdown();
  };
  const retries = {
    transientBackoffMs: fullJitterBackoff(config.NOTIFICATIONS_RETRY_BASE_MS, 30_000),
    backoffMs: (n: number) => Math.min(config.NOTIFICATIONS_RETRY_BASE_MS * 2 ** n, 30_000),
  };
  // What each handled event put in the feed, announced once its transaction has committed.
  const made = new Map<string, NotificationRow>();
  const afterCommit = (e: EventEnvelope) => {
    const row = made.get(e.id);
    made.delete(e.id);
    if (row) announce([row]);
    wakeDeliveries();
  };
  const docs = documentNotifier({ store, documents, token, publicUrl: config.PUBLIC_URL });
  const users = userNotifier({ store, documents, token, publicUrl: config.PUBLIC_URL });
  let server: RunningGrpcServer;
  try {
    await ensureTopics(kafka, [
      { topic: DOCUMENT_EVENTS, numPartitions: 3 },
      { topic: USER_EVENTS, numPartitions: 3 },
    ]);
    consumers.push(
      await startIdempotentConsumer<NotificationsDB, Awaited<ReturnType<typeof docs.prepare>>>({
        kafka,
        groupId: `${config.NOTIFICATIONS_GROUP_ID}-documents`,
        topics: [DOCUMENT_EVENTS],
        db,
        accepts: docs.handles,
        prepare: docs.prepare,
        async handler(e, trx, _delivery, doc) {
          made.delete(e.id);
          const intent = docs.intent(e, doc);
          if (!intent) return;
          const row = await plan(trx, store, intent, new Date());
          if (row) made.set(e.id, row);
        },
        afterCommit,
        ...retries,
        partitionsConsumedConcurrently: 3,
      }),
    );
    consumers.push(
      await startIdempotentConsumer<NotificationsDB>({
        kafka,
        groupId: `${config.NOTIFICATIONS_GROUP_ID}-users`,
        topics: [USER_EVENTS],
        db,
        accepts: users.handles,
        async handler(e, trx) {
          made.delete(e.id);
          const intent = await users.apply(e, trx);
          if (!intent) return;
          const row = await plan(trx, store, intent, new Date());
          if (row) made.set(e.id, row);
        },
        afterCommit,
        ...retries,
        partitionsConsumedConcurrently: 3,
      }),
    );
    server = await startGrpcServer({
      name: "notifications",
      host: config.NOTIFICATIONS_HOST,
      port: config.NOTIFICATIONS_PORT,
      services: [
        register(
          NotificationService,
          notificationService({
            store,
            db,
            feed,
            vapidPublicKey: vapid.publicKey,
            announced: () => void announcements.run().catch(onFailure("sending announcements")),
          }),
        ),
      ],
      interceptors: meshInterceptors({
        component: "notifications",
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
  deliveries.start(config.NOTIFICATIONS_POLL_MS);
  announcements.start(config.NOTIFICATIONS_POLL_MS);
  backfill.start(30_000);
  void backfill.run().catch(onFailure("copying accounts from identity"));

  return {
    port: server.port,
    feed,
    runDeliveries: () => deliveries.run(),
    runAnnouncements: () => announcements.run(),
    runRecipientBackfill: () => backfill.run(),
    endpoints: { notifications: `grpc://${server.address}` },
    async stop() {
      await server.shutdown(config.SHUTDOWN_GRACE_MS);
      await closeAll();
    },
  };
}

if (isEntryPoint(import.meta.url)) void runMain("notifications", () => startNotifications());
