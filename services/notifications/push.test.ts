import { randomBytes, randomUUID } from "node:crypto";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Kafka, logLevel } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code } from "@connectrpc/connect";
import { startBroker } from "../../deploy/embedded/kafka/index.js";
import { Role } from "../../gen/medmesh/access/v1/access_pb.js";
import {
  Channel,
  DeliveryMode,
  NotificationService,
  NotificationType,
} from "../../gen/medmesh/notifications/v1/notifications_pb.js";
import { NewSignInSchema } from "../../gen/medmesh/events/v1/user_events_pb.js";
import { contractEvent, newEvent, toKafkaMessage } from "../../platform/events/index.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { testEnv } from "../../test/support/backends.js";
import { startTestIdentity, type TestIdentity } from "../../test/support/identity.js";
import { startPushService, type TestPushService } from "../../test/support/push-service.js";
import { rejection } from "../../test/support/rejection.js";
import { startNotifications } from "./main.js";
import { eventually } from "../../test/support/eventually.js";

describe("web push", () => {
  const stops: Array<() => Promise<void>> = [];
  let identity: TestIdentity;
  let push: TestPushService;
  let svc: Awaited<ReturnType<typeof startNotifications>>;
  const client = async (who: "admin" | "doctor" | "researcher") =>
    createMeshClient(NotificationService, `127.0.0.1:${svc.port}`, {
      headers: await identity.bearer(who),
      defaultTimeoutMs: 20_000,
    });

  let brokerAddress = "";

  beforeAll(async () => {
    const broker = await startBroker({ port: 0, dataDir: null, logLevel: "silent" });
    brokerAddress = broker.address;
    stops.unshift(() => broker.stop());
    const key = `mmk_${randomBytes(32).toString("base64url")}`;
    identity = await startTestIdentity({
      KAFKA_BROKERS: broker.address,
      IDENTITY_BOOTSTRAP_API_KEYS: `notifications=${key}`,
    });
    stops.unshift(() => identity.stop());
    push = await startPushService();
    stops.unshift(() => push.stop());
    svc = await startNotifications(
      {
        ...testEnv,
        MEDMESH_DATA_DIR: "memory://",
        NOTIFICATIONS_DB_SCHEMA: "notifications_push",
        NOTIFICATIONS_PORT: "0",
        KAFKA_BROKERS: broker.address,
        DOCUMENTS_TARGET: "127.0.0.1:1",
        IDENTITY_TARGET: identity.target,
        NOTIFICATIONS_API_KEY: key,
        SMTP_URL: "smtp://127.0.0.1:1",
        NOTIFICATIONS_POLL_MS: "50",
        NOTIFICATIONS_RETRY_BASE_MS: "20",
        NOTIFICATIONS_RETRY_MAX_MS: "100",
      },
      { pushAgent: push.agent },
    );
    stops.unshift(svc.stop);
  }, 60_000);

  afterAll(async () => {
    for (const stop of stops) await stop();
  });

  it("pushes an encrypted, VAPID-signed payload the browser can read; a 410 removes that subscription", async () => {
    const doctor = await client("doctor");
    const admin = await client("admin");
    const { vapidPublicKey } = await doctor.getPushConfig({});
    const live = push.subscribe("laptop");
    const gone = push.subscribe("old-phone", { gone: true });
    const registered = await doctor.registerPushSubscription({ subscription: live });
    const dropped = await doctor.registerPushSubscription({ subscription: gone });
    await doctor.updatePreferences({
      preferences: [{ type: NotificationType.ANNOUNCEMENT, channel: Channel.PUSH, mode: DeliveryMode.IMMEDIATE }],
    });
    // The doctor must be known as a recipient (from user.events) before the announcement goes out.
    await identity.userId("doctor");
    // Security notices (the doctor's own sign-in) are pushed too; look for the announcement.
    const announced = () => live.received.find((p) => p.includes('"announcement"'));
    await eventually("the push", async () => {
      if (!announced()) {
        await admin.sendAnnouncement({
          title: `Ward rounds ${randomBytes(2).toString("hex")}`,
          body: "moved to 9:00",
          role: Role.DOCTOR,
        });
        await svc.runAnnouncements();
        await svc.runDeliveries();
      }
      return announced();
    });
    const payload = JSON.parse(announced()!) as { type: string; title: string; body: string };
    expect(payload.type).toBe("announcement");
    expect(payload.title).toMatch(/^Ward rounds/);
    expect(payload.body).toBe("moved to 9:00");
    expect(push.authorizations[0]).toMatch(new RegExp(`^vapid t=[^,]+, k=${vapidPublicKey}$`));
    // The dropped subscription is gone: removing it now finds nothing; the live one stays.
    expect((await rejection(doctor.removePushSubscription({ id: dropped.subscription!.id }))).code).toBe(Code.NotFound);
    await doctor.removePushSubscription({ id: registered.subscription!.id });
    const stats = (await admin.getDeliveryStats({})).stats.find(
      (s) => s.channel === Channel.PUSH && s.type === NotificationType.ANNOUNCEMENT && s.state === "sent",
    );
    expect(stats?.count).toBeGreaterThanOrEqual(1n);
    doctor.close();
    admin.close();
  }, 60_000);

  it("a push that reached one browser and not another is retried for the other only", async () => {
    const researcher = await client("researcher");
    // A sign-in from an address of this test's own: a security notice, pushed at once.
    const address = `2001:db8::${randomBytes(2).toString("hex")}`;
    const desk = push.subscribe("desk");
    const tablet = push.subscribe("tablet", { unavailableOnce: address });
    await researcher.registerPushSubscription({ subscription: desk });
    await researcher.registerPushSubscription({ subscription: tablet });
    const producer = new Kafka({
      brokers: [brokerAddress],
      clientId: "push-test",
      logLevel: logLevel.NOTHING,
    }).producer();
    await producer.connect();
    const userId = await identity.userId("researcher");
    const signIn = contractEvent(
      NewSignInSchema,
      { userId, sessionId: randomUUID(), clientAddress: address, signInTime: timestampNow() },
      { key: userId, source: "/push-test" },
    );
    await producer.send({ topic: "user.events", messages: [toKafkaMessage(newEvent(signIn))] });
    await producer.disconnect();
    const got = (sub: { received: string[] }) => sub.received.filter((p) => p.includes(address));
    await eventually("the first attempt", async () => {
      await svc.runDeliveries();
      return got(desk).length > 0;
    });
    await eventually("the retry", async () => {
      await svc.runDeliveries();
      return got(tablet).length > 0;
    });
    await svc.runDeliveries();
    // The desk had it from the first attempt; the retry went to the tablet alone.
    expect(got(desk)).toHaveLength(1);
    expect(got(tablet)).toHaveLength(1);
    researcher.close();
  }, 60_000);
});
