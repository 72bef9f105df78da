import { randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code } from "@connectrpc/connect";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Kafka, logLevel } from "kafkajs";
import { startBroker } from "../../deploy/embedded/kafka/index.js";
import { Role } from "../../gen/medmesh/access/v1/access_pb.js";
import { DocumentType, type UploadRequest } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { NewSignInSchema } from "../../gen/medmesh/events/v1/user_events_pb.js";
import { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import {
  Channel,
  DeliveryMode,
  NotificationService,
  NotificationType,
  type Notification,
  type SubscribeResponse,
} from "../../gen/medmesh/notifications/v1/notifications_pb.js";
import { contractEvent, newEvent, toKafkaMessage } from "../../platform/events/index.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { testEnv } from "../../test/support/backends.js";
import { personaClients } from "../../test/support/documents.js";
import { startTestIdentity, type Persona, type TestIdentity } from "../../test/support/identity.js";
import { recipientsOf, startMailbox, type TestMailbox } from "../../test/support/mailbox.js";
import { rejection } from "../../test/support/rejection.js";
import { startDocuments } from "../documents/main.js";
import { startProcessing } from "../processing/main.js";
import { startNotifications } from "./main.js";
import { eventually } from "../../test/support/eventually.js";

type Client = ReturnType<typeof createMeshClient<typeof NotificationService>>;

async function* paper(title: string): AsyncIterable<UploadRequest> {
  yield {
    part: {
      case: "header",
      value: { document: { title, documentType: DocumentType.RESEARCH_PAPER }, filename: "paper.txt" },
    },
  } as never;
  yield {
    part: { case: "chunk", value: Buffer.from(`${title}\n\nAbstract\nAspirin and heart disease.\n\nBody text.\n`) },
  } as never;
}

/** Reads a Subscribe stream in the background; `seen` fills as notifications arrive. */
function collect(client: Client, afterSequence = 0n) {
  const abort = new AbortController();
  const seen: Notification[] = [];
  const responses: SubscribeResponse[] = [];
  const done = (async () => {
    try {
      for await (const r of client.subscribe({ afterSequence }, { signal: abort.signal, timeoutMs: 120_000 })) {
        responses.push(r);
        if (r.notification) seen.push(r.notification);
      }
    } catch {
      // cancelled at the end of the test
    }
  })();
  return {
    seen,
    /** Every response, those that only report reads too. */
    responses,
    async until(n: number) {
      await eventually(`${n} notifications on the stream`, async () => (seen.length >= n ? true : undefined));
    },
    async stop() {
      abort.abort();
      await done;
    },
  };
}

describe("notifications", () => {
  const suffix = randomBytes(4).toString("hex");
  const keys = Object.fromEntries(
    ["processing", "notifications"].map((n) => [n, `mmk_${randomBytes(32).toString("base64url")}`]),
  );
  const stops: Array<() => Promise<void>> = [];
  const clients: Array<{ close(): void }> = [];
  let identity: TestIdentity;
  let mailbox: TestMailbox;
  let brokerAddress: string;
  let docsAddress: string;
  let address: string;
  let runDeliveries: () => Promise<number>;
  let runAnnouncements: () => Promise<number>;
  const as = async (who: Persona): Promise<Client> => {
    const c = createMeshClient(NotificationService, address, {
      headers: await identity.bearer(who),
      defaultTimeoutMs: 20_000,
    });
    clients.push(c);
    return c;
  };
  const identityClient = () => {
    const c = createMeshClient(IdentityService, identity.target, { defaultTimeoutMs: 20_000 });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    const broker = await startBroker({ port: 0, dataDir: null, logLevel: "silent" });
    stops.unshift(() => broker.stop());
    brokerAddress = broker.address;
    mailbox = await startMailbox({ rejectRecipients: /^bounce/ });
    stops.unshift(() => mailbox.stop());
    identity = await startTestIdentity({
      KAFKA_BROKERS: broker.address,
      IDENTITY_BOOTSTRAP_API_KEYS: `processing=${keys.processing},notifications=${keys.notifications}`,
    });
    stops.unshift(() => identity.stop());
    const documents = await startDocuments({
      ...testEnv,
      MEDMESH_DATA_DIR: "memory://",
      DOCUMENTS_DB_SCHEMA: `documents_n${suffix}`,
      IDENTITY_TARGET: identity.target,
      KAFKA_BROKERS: broker.address,
      BLOB_DIR: mkdtempSync(path.join(os.tmpdir(), "medmesh-notifications-test-")),
    });
    stops.unshift(documents.stop);
    docsAddress = `127.0.0.1:${documents.port}`;
    const worker = await startProcessing({
      ...testEnv,
      MEDMESH_DATA_DIR: "memory://",
      PROCESSING_DB_SCHEMA: `processing_n${suffix}`,
      PROCESSING_PORT: "0",
      PROCESSING_CONCURRENCY: "1",
      KAFKA_BROKERS: broker.address,
      DOCUMENTS_TARGET: docsAddress,
      IDENTITY_TARGET: identity.target,
      PROCESSING_API_KEY: keys.processing!,
    });
    stops.unshift(worker.stop);
    const svc = await startNotifications({
      ...testEnv,
      MEDMESH_DATA_DIR: "memory://",
      NOTIFICATIONS_DB_SCHEMA: `notifications_t${suffix}`,
      NOTIFICATIONS_PORT: "0",
      KAFKA_BROKERS: broker.address,
      DOCUMENTS_TARGET: docsAddress,
      IDENTITY_TARGET: identity.target,
      NOTIFICATIONS_API_KEY: keys.notifications!,
      SMTP_URL: mailbox.url,
      PUBLIC_URL: "http://console.test",
      NOTIFICATIONS_POLL_MS: "100",
      NOTIFICATIONS_RETRY_BASE_MS: "50",
    });
    stops.unshift(svc.stop);
    address = `127.0.0.1:${svc.port}`;
    runDeliveries = svc.runDeliveries;
    runAnnouncements = svc.runAnnouncements;
  }, 120_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    for (const stop of stops) await stop();
  });

  it("password reset works end to end: the mail has the link, the link resets, the token was never on Kafka", async () => {
    const email = "researcher@medmesh.test";
    await identity.userId("researcher");
    const idc = identityClient();
    await idc.requestPasswordReset({ email });
    const mail = await mailbox.waitFor(
      "reset mail",
      (m) => recipientsOf(m).includes(email) && /Reset/.test(m.subject ?? ""),
    );
    expect(mail.subject).toBe("Reset your medmesh password");
    expect(mail.text).toContain("Hello researcher,");
    const link = /http:\/\/console\.test\/#\/reset-password\?token=([A-Za-z0-9_%-]+)/.exec(mail.text ?? "");
    expect(link).not.toBeNull();
    // The HTML part carries the same link in an anchor.
    // (Handlebars escapes "=" in attribute values as &#x3D;, which a browser reads back as "=".)
    expect(String(mail.html).replaceAll("&#x3D;", "=")).toContain(`href="${link![0]}"`);
    const token = decodeURIComponent(link![1]!);
    await idc.resetPassword({ token, newPassword: "a brand new passphrase" });
    const login = await idc.login({ login: email, password: "a brand new passphrase" });
    expect(login.result.case).toBe("tokens");
    // Used once: the same link again is refused.
    expect((await rejection(idc.resetPassword({ token, newPassword: "another passphrase!" }))).code).toBe(
      Code.InvalidArgument,
    );

    // Nothing on user.events carries the token.
    const kafka = new Kafka({ brokers: [brokerAddress], clientId: "peek", logLevel: logLevel.NOTHING });
    const consumer = kafka.consumer({ groupId: `peek-${randomUUID()}` });
    await consumer.connect();
    await consumer.subscribe({ topic: "user.events", fromBeginning: true });
    const payloads: Buffer[] = [];
    await consumer.run({ eachMessage: async ({ message }) => void payloads.push(message.value!) });
    await eventually("user.events read", async () => (payloads.length >= 3 ? true : undefined));
    await consumer.disconnect();
    expect(Buffer.concat(payloads).includes(Buffer.from(token))).toBe(false);
  });

  it("email verification works end to end", async () => {
    const student = await identity.bearer("student");
    const idc = identityClient();
    await idc.requestEmailVerification({}, { headers: student });
    const mail = await mailbox.waitFor(
      "verification mail",
      (m) => recipientsOf(m).includes("student@medmesh.test") && /Confirm/.test(m.subject ?? ""),
    );
    const token = decodeURIComponent(/verify-email\?token=([A-Za-z0-9_%-]+)/.exec(mail.text ?? "")![1]!);
    await idc.verifyEmail({ token });
    const me = await idc.getMe({}, { headers: student });
    expect(me.user?.emailVerified).toBe(true);
  });

  it("a processed document reaches its uploader's live feed, and nobody else's", async () => {
    const docs = personaClients(
      () => identity,
      () => docsAddress,
    );
    const doctor = await as("doctor");
    const doctor2 = await as("doctor2");
    const mine = collect(doctor);
    const theirs = collect(doctor2);
    const uploader = await docs.as("doctor");
    const title = `Aspirin ${randomBytes(3).toString("hex")}`;
    const { document } = await uploader.upload(paper(title));
    await eventually("the processed notification", async () =>
      mine.seen.find(
        (n) => n.type === NotificationType.DOCUMENT_PROCESSED && n.attributes.document_id === document!.id,
      ),
    );
    const got = mine.seen.find((n) => n.attributes.document_id === document!.id)!;
    expect(got.title).toBe("Document processed");
    expect(got.body).toContain(title);
    expect(got.link).toBe(`/documents/${document!.id}`);
    // doctor2 hears nothing about it, now or in the list.
    expect(theirs.seen.some((n) => n.attributes.document_id === document!.id)).toBe(false);
    const list2 = await doctor2.listNotifications({});
    expect(list2.notifications.some((n) => n.attributes.document_id === document!.id)).toBe(false);
    await mine.stop();
    await theirs.stop();
    docs.closeAll();
  }, 60_000);

  it("resumes from a cursor with nothing missed or repeated, and starts with what is unread", async () => {
    const admin = await as("admin");
    const doctor = await as("doctor");
    const before = await doctor.listNotifications({ pageSize: 1 });
    const last = before.notifications[0]?.sequence ?? 0n;
    await admin.sendAnnouncement({ title: "One", body: "first", role: Role.DOCTOR });
    await runAnnouncements();
    const first = collect(doctor, last);
    await first.until(1);
    await first.stop();
    expect(first.seen.map((n) => n.title)).toEqual(["One"]);
    // While disconnected, two more.
    await admin.sendAnnouncement({ title: "Two", body: "second", role: Role.DOCTOR });
    await admin.sendAnnouncement({ title: "Three", body: "third", role: Role.DOCTOR });
    await runAnnouncements();
    const resumed = collect(doctor, first.seen[0]!.sequence);
    await resumed.until(2);
    await admin.sendAnnouncement({ title: "Four", body: "live", role: Role.DOCTOR });
    await runAnnouncements();
    await resumed.until(3);
    await resumed.stop();
    expect(resumed.seen.map((n) => n.title)).toEqual(["Two", "Three", "Four"]);
    const seqs = resumed.seen.map((n) => Number(n.sequence));
    expect(seqs).toEqual([seqs[0]!, seqs[0]! + 1, seqs[0]! + 2]);
    // Without a cursor: the unread ones, oldest first; reading them all leaves nothing.
    const fresh = collect(doctor);
    await fresh.until(4);
    await fresh.stop();
    expect(fresh.seen.every((n) => !n.readTime)).toBe(true);
    const all = await doctor.markAllRead({});
    expect(all.unreadCount).toBe(0n);
    const again = await doctor.listNotifications({ unreadOnly: true });
    expect(again.notifications).toHaveLength(0);
    // A student was not a recipient of the doctors' announcement.
    const student = await as("student");
    const sl = await student.listNotifications({});
    expect(sl.notifications.some((n) => n.type === NotificationType.ANNOUNCEMENT)).toBe(false);
  });

  it("the unread count on a stream follows reads made on another connection", async () => {
    const admin = await as("admin");
    const doctor = await as("doctor");
    const elsewhere = await as("doctor");
    await doctor.markAllRead({});
    const stream = collect(doctor);
    await admin.sendAnnouncement({ title: "Read me", body: "first", role: Role.DOCTOR });
    await admin.sendAnnouncement({ title: "And me", body: "second", role: Role.DOCTOR });
    await runAnnouncements();
    await stream.until(2);
    expect(stream.responses.at(-1)!.unreadCount).toBe(2n);
    const [first, second] = stream.seen;
    await elsewhere.markRead({ ids: [first!.id] });
    const afterOne = await eventually("the stream told of MarkRead", async () =>
      stream.responses.find((r) => r.read?.ids.includes(first!.id)),
    );
    expect(afterOne.notification).toBeUndefined();
    expect(afterOne.unreadCount).toBe(1n);
    await elsewhere.markAllRead({});
    const afterAll = await eventually("the stream told of MarkAllRead", async () =>
      stream.responses.find((r) => (r.read?.allUpToSequence ?? 0n) >= second!.sequence),
    );
    expect(afterAll.unreadCount).toBe(0n);
    await stream.stop();
  });

  it("one notification per event however often it is delivered", async () => {
    const userId = await identity.userId("doctor2");
    const session = randomUUID();
    const event = newEvent({
      ...contractEvent(
        NewSignInSchema,
        { userId, sessionId: session, clientAddress: "198.51.100.9", signInTime: timestampNow() },
        { key: userId, source: "/medmesh/identity" },
      ),
      id: randomUUID(),
    });
    const kafka = new Kafka({ brokers: [brokerAddress], clientId: "redeliver", logLevel: logLevel.NOTHING });
    const producer = kafka.producer();
    await producer.connect();
    for (let i = 0; i < 3; i++) await producer.send({ topic: "user.events", messages: [toKafkaMessage(event)] });
    await producer.disconnect();
    const doctor2 = await as("doctor2");
    const mine = async () =>
      (await doctor2.listNotifications({ pageSize: 100 })).notifications.filter(
        (n) => n.attributes.session_id === session,
      );
    await eventually("the sign-in notice", async () => ((await mine()).length > 0 ? true : undefined));
    // The sign-in mail went out once too.
    await mailbox.waitFor("sign-in mail", (m) => (m.text ?? "").includes("198.51.100.9"));
    await new Promise((r) => setTimeout(r, 1000));
    await runDeliveries();
    expect(await mine()).toHaveLength(1);
    expect(mailbox.messages.filter((m) => (m.text ?? "").includes("198.51.100.9"))).toHaveLength(1);
  });

  it("users read and change only their own notifications", async () => {
    const doctor = await as("doctor");
    const doctor2 = await as("doctor2");
    const theirs = (await doctor.listNotifications({ pageSize: 5 })).notifications[0]!;
    const err = await rejection(doctor2.markRead({ ids: [theirs.id] }));
    expect(err.code).toBe(Code.NotFound);
    const unknown = await rejection(doctor2.markRead({ ids: [randomUUID()] }));
    expect(unknown.code).toBe(Code.NotFound);
    expect(unknown.rawMessage).toMatch(/does not exist/);
    // Admin-only RPCs refuse everyone else.
    for (const call of [
      () => doctor.listTemplates({}),
      () => doctor.sendAnnouncement({ title: "x", body: "y" }),
      () => doctor.getDeliveryStats({}),
    ])
      expect((await rejection(call())).code).toBe(Code.PermissionDenied);
    // Nobody signed in: nothing.
    const anonymous = createMeshClient(NotificationService, address, { defaultTimeoutMs: 5_000 });
    clients.push(anonymous);
    expect((await rejection(anonymous.listNotifications({}))).code).toBe(Code.Unauthenticated);
  });

  it("preferences: security notices stay on, bad zones and unknown values are refused by name", async () => {
    const doctor = await as("doctor");
    const prefs = await doctor.getPreferences({});
    expect(prefs.preferences).toHaveLength(10 * 3);
    const off = await rejection(
      doctor.updatePreferences({
        preferences: [{ type: NotificationType.NEW_SIGN_IN, channel: Channel.EMAIL, mode: DeliveryMode.OFF }],
      }),
    );
    expect(off.code).toBe(Code.InvalidArgument);
    expect(off.rawMessage).toMatch(/preferences\[0\]\.mode.*security notice/);
    const tz = await rejection(
      doctor.updatePreferences({ quietHours: { startMinute: 1320, endMinute: 420, timeZone: "Mars/Olympus" } }),
    );
    expect(tz.code).toBe(Code.InvalidArgument);
    expect(tz.rawMessage).toContain("quiet_hours.time_zone");
    const unknownType = await rejection(
      doctor.updatePreferences({
        preferences: [{ type: 99 as NotificationType, channel: Channel.EMAIL, mode: DeliveryMode.OFF }],
      }),
    );
    expect(unknownType.code).toBe(Code.InvalidArgument);
    expect(unknownType.rawMessage).toContain("preferences[0].type");
    const unknownChannel = await rejection(
      doctor.updatePreferences({
        preferences: [{ type: NotificationType.WELCOME, channel: 7 as Channel, mode: DeliveryMode.OFF }],
      }),
    );
    expect(unknownChannel.rawMessage).toContain("preferences[0].channel");
    const ok = await doctor.updatePreferences({
      preferences: [
        { type: NotificationType.DOCUMENT_PROCESSED, channel: Channel.EMAIL, mode: DeliveryMode.HOURLY_DIGEST },
      ],
      quietHours: { startMinute: 1320, endMinute: 420, timeZone: "Europe/Paris" },
    });
    expect(
      ok.preferences.find((p) => p.type === NotificationType.DOCUMENT_PROCESSED && p.channel === Channel.EMAIL)?.mode,
    ).toBe(DeliveryMode.HOURLY_DIGEST);
    expect(ok.quietHours?.timeZone).toBe("Europe/Paris");
    // Another user's preferences are untouched.
    const other = await (await as("doctor2")).getPreferences({});
    expect(other.quietHours).toBeUndefined();
  });

  it("templates: versioned, variables checked by name, syntax and size refused, rendered escaped with a text part", async () => {
    const admin = await as("admin");
    const base = {
      type: NotificationType.WELCOME,
      subject: "Hi {{first_name}}",
      htmlBody: "<p>{{first_name}} / {{username}}</p>",
      textBody: "{{first_name}} / {{username}}",
      variables: ["first_name", "username"],
    };
    const unknown = await rejection(
      admin.putTemplate({ template: { ...base, variables: [...base.variables, "ssn"] } }),
    );
    expect(unknown.code).toBe(Code.InvalidArgument);
    expect(unknown.rawMessage).toContain('unknown variable "ssn"');
    const undeclared = await rejection(admin.putTemplate({ template: { ...base, variables: ["first_name"] } }));
    expect(undeclared.rawMessage).toContain('"username"');
    const syntax = await rejection(admin.putTemplate({ template: { ...base, htmlBody: "<p>{{#if first_name}}</p>" } }));
    expect(syntax.rawMessage).toContain("template.html_body");
    const raw = await rejection(
      admin.putTemplate({ template: { ...base, htmlBody: "{{{first_name}}} {{username}}" } }),
    );
    expect(raw.rawMessage).toContain("unescaped");
    const missing = await rejection(
      admin.putTemplate({
        template: { type: NotificationType.PASSWORD_RESET, subject: "Reset", htmlBody: "<p>hi</p>", textBody: "hi" },
      }),
    );
    expect(missing.rawMessage).toContain('missing variable "link"');
    const long = await rejection(admin.putTemplate({ template: { ...base, htmlBody: "x".repeat(20_001) } }));
    expect(long.code).toBe(Code.InvalidArgument);
    expect(long.rawMessage).toContain("template.html_body");
    const saved = await admin.putTemplate({ template: base });
    expect(saved.template?.version).toBe(2);
    const preview = await admin.previewTemplate({
      template: { type: NotificationType.WELCOME },
      values: { first_name: "<script>x</script>" },
    });
    expect(preview.html).toContain("&lt;script&gt;");
    expect(preview.text).toContain("<script>x</script> / ada");
    const list = await admin.listTemplates({});
    expect(list.templates.find((t) => t.type === NotificationType.WELCOME)?.version).toBe(2);
  });

  it("push subscriptions: malformed ones are refused by field, others are the caller's own", async () => {
    const doctor = await as("doctor");
    const doctor2 = await as("doctor2");
    const good = {
      endpoint: "https://push.example/abc",
      p256dh: Buffer.concat([Buffer.from([4]), randomBytes(64)]).toString("base64url"),
      auth: randomBytes(16).toString("base64url"),
    };
    const bad = await rejection(doctor.registerPushSubscription({ subscription: { ...good, p256dh: "short" } }));
    expect(bad.code).toBe(Code.InvalidArgument);
    expect(bad.rawMessage).toContain("subscription.p256dh");
    const notUrl = await rejection(doctor.registerPushSubscription({ subscription: { ...good, endpoint: "nope" } }));
    expect(notUrl.rawMessage).toContain("subscription.endpoint");
    const { subscription } = await doctor.registerPushSubscription({ subscription: good });
    expect((await rejection(doctor2.removePushSubscription({ id: subscription!.id }))).code).toBe(Code.NotFound);
    await doctor.removePushSubscription({ id: subscription!.id });
  });

  it("a 5xx from the SMTP server ends a delivery at once, recorded with the server's answer", async () => {
    const admin = await as("admin");
    // An account whose address the test SMTP server refuses with 550.
    const idc = identityClient();
    const { user } = await idc.register({
      email: `bounce-${suffix}@medmesh.test`,
      username: `bounce${suffix}`,
      password: "a long test password",
      firstName: "Bounce",
      lastName: "Test",
    });
    await eventually("the welcome delivery to fail", async () => {
      await runDeliveries();
      const stats = await admin.getDeliveryStats({});
      return stats.stats.find(
        (s) => s.channel === Channel.EMAIL && s.type === NotificationType.WELCOME && s.state === "failed",
      );
    });
    const stat = (await admin.getDeliveryStats({})).stats.find(
      (s) => s.channel === Channel.EMAIL && s.type === NotificationType.WELCOME && s.state === "failed",
    )!;
    expect(stat.count).toBe(1n);
    expect(stat.attempts).toBe(1n);
    expect(user?.id).toBeTruthy();
  });
});
