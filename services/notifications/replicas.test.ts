import { randomBytes, randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Kafka, logLevel } from "kafkajs";
import { startBroker } from "../../deploy/embedded/kafka/index.js";
import { Role } from "../../gen/medmesh/access/v1/access_pb.js";
import { NewSignInSchema } from "../../gen/medmesh/events/v1/user_events_pb.js";
import { NotificationService, type Notification } from "../../gen/medmesh/notifications/v1/notifications_pb.js";
import { contractEvent, toKafkaMessage, newEvent } from "../../platform/events/index.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { testEnv } from "../../test/support/backends.js";
import { freePort } from "../../test/support/embedded-mesh.js";
import { startTestIdentity, type TestIdentity } from "../../test/support/identity.js";
import { recipientsOf, startMailbox } from "../../test/support/mailbox.js";
import { startNotifications } from "./main.js";
import { eventually } from "../../test/support/eventually.js";

type Client = ReturnType<typeof createMeshClient<typeof NotificationService>>;

function collect(client: Client) {
  const abort = new AbortController();
  const seen: Notification[] = [];
  const done = (async () => {
    try {
      for await (const r of client.subscribe({}, { signal: abort.signal, timeoutMs: 120_000 }))
        seen.push(r.notification!);
    } catch {
      // ended by the test
    }
  })();
  return {
    seen,
    stop: async () => {
      abort.abort();
      await done;
    },
  };
}

async function signInEvent(broker: string, userId: string, address: string) {
  const kafka = new Kafka({ brokers: [broker], clientId: "test", logLevel: logLevel.NOTHING });
  const producer = kafka.producer();
  await producer.connect();
  const event = newEvent(
    contractEvent(
      NewSignInSchema,
      { userId, sessionId: randomUUID(), clientAddress: address, signInTime: timestampNow() },
      { key: userId, source: "/medmesh/identity" },
    ),
  );
  await producer.send({ topic: "user.events", messages: [toKafkaMessage(event)] });
  await producer.disconnect();
}

const shared = process.env.DATABASE_URL && process.env.REDIS_URL;

describe.skipIf(!shared)("two replicas sharing Postgres and Redis", () => {
  const stops: Array<() => Promise<void>> = [];
  const clients: Client[] = [];
  let identity: TestIdentity;
  let brokerAddress: string;
  let a: Awaited<ReturnType<typeof startNotifications>>;
  let b: Awaited<ReturnType<typeof startNotifications>>;

  beforeAll(async () => {
    const broker = await startBroker({ port: 0, dataDir: null, logLevel: "silent" });
    stops.unshift(() => broker.stop());
    brokerAddress = broker.address;
    const key = `mmk_${randomBytes(32).toString("base64url")}`;
    identity = await startTestIdentity({
      KAFKA_BROKERS: broker.address,
      IDENTITY_BOOTSTRAP_API_KEYS: `notifications=${key}`,
    });
    stops.unshift(() => identity.stop());
    const env = {
      ...testEnv,
      DATABASE_URL: process.env.DATABASE_URL!,
      REDIS_URL: process.env.REDIS_URL!,
      NOTIFICATIONS_DB_SCHEMA: `notifications_r${randomBytes(4).toString("hex")}`,
      NOTIFICATIONS_PORT: "0",
      KAFKA_BROKERS: broker.address,
      DOCUMENTS_TARGET: "127.0.0.1:1",
      IDENTITY_TARGET: identity.target,
      NOTIFICATIONS_API_KEY: key,
      SMTP_URL: "smtp://127.0.0.1:1",
      NOTIFICATIONS_POLL_MS: "100",
    };
    a = await startNotifications(env);
    stops.unshift(a.stop);
    b = await startNotifications(env);
    stops.unshift(b.stop);
  }, 120_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    for (const stop of stops) await stop();
  });

  const client = async (port: number, who: "admin" | "doctor" | "student") => {
    const c = createMeshClient(NotificationService, `127.0.0.1:${port}`, {
      headers: await identity.bearer(who),
      defaultTimeoutMs: 20_000,
    });
    clients.push(c);
    return c;
  };

  it("a notification made on one replica reaches a subscriber of the other", async () => {
    const onB = collect(await client(b.port, "doctor"));
    const studentOnA = collect(await client(a.port, "student"));
    await eventually(
      "both streams open",
      async () => (b.feed.subscribers() > 0 && a.feed.subscribers() > 0) || undefined,
    );
    const adminOnA = await client(a.port, "admin");
    await adminOnA.sendAnnouncement({ title: "Made on A", body: "hello from replica A", role: Role.DOCTOR });
    // The doctor must be a known recipient: registration reached notifications through user.events.
    await eventually("the announcement on B's stream", async () => {
      await a.runAnnouncements();
      return onB.seen.find((n) => n.title === "Made on A");
    });
    // An event consumed by whichever replica holds the partition also reaches B's subscriber.
    const doctorId = await identity.userId("doctor");
    await signInEvent(brokerAddress, doctorId, "192.0.2.44");
    await eventually("the sign-in notice on B's stream", async () =>
      onB.seen.find((n) => n.body.includes("192.0.2.44")),
    );
    // Nothing duplicated across the two replicas, and nothing for the student.
    const seqs = onB.seen.map((n) => Number(n.sequence));
    expect(new Set(seqs).size).toBe(seqs.length);
    expect(studentOnA.seen.some((n) => n.title === "Made on A")).toBe(false);
    await onB.stop();
    await studentOnA.stop();
  }, 60_000);
});

describe("an SMTP server that is down", () => {
  it("delays mail, retried with backoff, and loses none", async () => {
    const stops: Array<() => Promise<void>> = [];
    try {
      const broker = await startBroker({ port: 0, dataDir: null, logLevel: "silent" });
      stops.unshift(() => broker.stop());
      const key = `mmk_${randomBytes(32).toString("base64url")}`;
      const identity = await startTestIdentity({
        KAFKA_BROKERS: broker.address,
        IDENTITY_BOOTSTRAP_API_KEYS: `notifications=${key}`,
      });
      stops.unshift(() => identity.stop());
      const smtpPort = await freePort();
      const svc = await startNotifications({
        ...testEnv,
        MEDMESH_DATA_DIR: "memory://",
        NOTIFICATIONS_DB_SCHEMA: "notifications_down",
        NOTIFICATIONS_PORT: "0",
        KAFKA_BROKERS: broker.address,
        DOCUMENTS_TARGET: "127.0.0.1:1",
        IDENTITY_TARGET: identity.target,
        NOTIFICATIONS_API_KEY: key,
        SMTP_URL: `smtp://127.0.0.1:${smtpPort}`,
        NOTIFICATIONS_POLL_MS: "50",
        NOTIFICATIONS_RETRY_BASE_MS: "50",
        NOTIFICATIONS_RETRY_MAX_MS: "200",
      });
      stops.unshift(svc.stop);
      const admin = createMeshClient(NotificationService, `127.0.0.1:${svc.port}`, {
        headers: await identity.bearer("admin"),
      });
      const doctorId = await identity.userId("doctor");
      await signInEvent(broker.address, doctorId, "203.0.113.77");
      // Tries fail while nothing listens: retried, recorded, not given up.
      await eventually("retries recorded", async () => {
        const stats = (await admin.getDeliveryStats({})).stats.filter((s) => s.state === "queued");
        return stats.reduce((n, s) => n + Number(s.attempts), 0) >= 3 ? true : undefined;
      });
      expect((await admin.getDeliveryStats({})).stats.some((s) => s.state === "failed")).toBe(false);
      // The server comes up: what waited is delivered.
      const mailbox = await startMailbox({ port: smtpPort });
      stops.unshift(() => mailbox.stop());
      const mail = await mailbox.waitFor("the delayed sign-in mail", (m) => (m.text ?? "").includes("203.0.113.77"));
      expect(recipientsOf(mail)).toEqual(["doctor@medmesh.test"]);
      expect(mail.subject).toBe("New sign-in to your account");
      await eventually("the welcome mails too", async () =>
        mailbox.messages.filter((m) => m.subject?.startsWith("Welcome")).length >= 2 ? true : undefined,
      );
      admin.close();
    } finally {
      for (const stop of stops) await stop();
    }
  }, 90_000);
});
