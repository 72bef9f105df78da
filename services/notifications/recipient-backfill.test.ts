import { randomBytes } from "node:crypto";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startBroker } from "../../deploy/embedded/kafka/index.js";
import { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { NotificationService } from "../../gen/medmesh/notifications/v1/notifications_pb.js";
import type { ServiceToken } from "../../platform/auth/service-token.js";
import { openServiceDatabase } from "../../platform/db/database.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { logger as log } from "../../platform/telemetry/logger.js";
import { testEnv } from "../../test/support/backends.js";
import { startTestIdentity, type TestIdentity } from "../../test/support/identity.js";
import { recipientsOf, startMailbox, type TestMailbox } from "../../test/support/mailbox.js";
import { startNotifications } from "./main.js";
import { migrations } from "./migrations/index.js";
import { recipientBackfill } from "./recipient-backfill.js";
import { NotificationStore } from "./store.js";
import type { NotificationsDB } from "./tables.js";

// The accounts here are made while identity publishes user.events to a broker notifications never
// reads: to notifications they are accounts from before identity had its outbox.
describe("accounts user.events never mentioned", () => {
  const key = `mmk_${randomBytes(32).toString("base64url")}`;
  const stops: Array<() => Promise<void>> = [];
  let identity: TestIdentity;
  let mailbox: TestMailbox;
  let notifications: Awaited<ReturnType<typeof startNotifications>>;

  beforeAll(async () => {
    const identityBroker = await startBroker({ port: 0, dataDir: null, logLevel: "silent" });
    stops.unshift(() => identityBroker.stop());
    const notificationsBroker = await startBroker({ port: 0, dataDir: null, logLevel: "silent" });
    stops.unshift(() => notificationsBroker.stop());
    mailbox = await startMailbox();
    stops.unshift(() => mailbox.stop());
    identity = await startTestIdentity({
      KAFKA_BROKERS: identityBroker.address,
      IDENTITY_BOOTSTRAP_API_KEYS: `notifications=${key}`,
    });
    stops.unshift(() => identity.stop());
    for (const who of ["doctor", "researcher", "student"] as const) await identity.userId(who);
    notifications = await startNotifications({
      ...testEnv,
      MEDMESH_DATA_DIR: "memory://",
      NOTIFICATIONS_DB_SCHEMA: `notifications_b${randomBytes(4).toString("hex")}`,
      NOTIFICATIONS_PORT: "0",
      KAFKA_BROKERS: notificationsBroker.address,
      // Nothing here reads documents; an address that refuses is enough.
      DOCUMENTS_TARGET: "127.0.0.1:9",
      IDENTITY_TARGET: identity.target,
      NOTIFICATIONS_API_KEY: key,
      SMTP_URL: mailbox.url,
      NOTIFICATIONS_POLL_MS: "100",
    });
    stops.unshift(notifications.stop);
  }, 120_000);

  afterAll(async () => {
    for (const stop of stops) await stop();
  });

  it("are copied from identity at start and get an announcement by email; the copy never runs twice", async () => {
    // The run started with the service; this one waits for it and finds nothing left to do.
    expect(await notifications.runRecipientBackfill()).toBe(0);
    const admin = createMeshClient(NotificationService, `127.0.0.1:${notifications.port}`, {
      headers: await identity.bearer("admin"),
      defaultTimeoutMs: 20_000,
    });
    try {
      await admin.sendAnnouncement({ title: "Maintenance tonight", body: "Read-only from 22:00 UTC." });
      await notifications.runAnnouncements();
      await notifications.runDeliveries();
      for (const who of ["doctor", "researcher", "student", "admin"]) {
        const mail = await mailbox.waitFor(`the announcement to ${who}`, (m) =>
          recipientsOf(m).includes(`${who}@medmesh.test`),
        );
        expect(mail.subject).toBe("Maintenance tonight");
        expect(mail.text).toContain(`Hello ${who},`);
      }
    } finally {
      admin.close();
    }
  });

  it("resumes after a failure where it stopped, and keeps a role user.events brought", async () => {
    const schema = `notifications_r${randomBytes(4).toString("hex")}`;
    const database = await openServiceDatabase<NotificationsDB>(
      "notifications",
      { MEDMESH_DATA_DIR: "memory://", DB_POOL_MAX: 2, DATABASE_URL: process.env.DATABASE_URL },
      schema,
      migrations,
    );
    const identityClient = createMeshClient(IdentityService, identity.target, { defaultTimeoutMs: 10_000 });
    try {
      const store = new NotificationStore(database.db, schema);
      const doctorId = await identity.userId("doctor");
      // An event already said the doctor became a researcher; the copy must not undo that.
      await store.upsertRecipient(database.db, { userId: doctorId, role: "researcher" });

      const afterIds: string[] = [];
      let failOnCall = 3;
      const token: ServiceToken = {
        headers: () => identity.serviceBearer("notifications"),
        invalidate() {},
        close() {},
        async call(call) {
          if (--failOnCall === 0) throw new Error("identity went away");
          return call(await identity.serviceBearer("notifications"));
        },
      };
      const tracking = {
        ...identityClient,
        listUsers: (req: { afterUserId?: string; pageSize?: number }, opts?: object) => {
          afterIds.push(req.afterUserId ?? "");
          return identityClient.listUsers(req, opts);
        },
      } as typeof identityClient;
      const backfill = recipientBackfill({ db: database.db, store, identity: tracking, token, log, pageSize: 1 });

      await expect(backfill()).rejects.toThrow("identity went away");
      const stopped = await store.recipientSync();
      expect(stopped?.completed_at).toBeNull();
      expect(afterIds).toHaveLength(2);
      expect(stopped?.after_user_id).not.toBe("");

      expect(await backfill()).toBeGreaterThan(0);
      // The second run started after the last account the first one committed, not from the top.
      expect(afterIds[2]).toBe(stopped!.after_user_id);
      expect(afterIds.filter((a) => a === "")).toHaveLength(1);

      const all = await database.db.selectFrom("recipient").selectAll().execute();
      for (const who of ["admin", "doctor", "researcher", "student"] as const) {
        const row = all.find((r) => r.user_id === ids[who]);
        expect(row?.email, who).toBe(`${who}@medmesh.test`);
      }
      expect(all.find((r) => r.user_id === doctorId)).toMatchObject({ role: "researcher", first_name: "doctor" });
      expect(all.find((r) => r.user_id === ids.student)?.role).toBe("student");

      const calls = afterIds.length;
      expect(await backfill()).toBe(0);
      expect(afterIds).toHaveLength(calls);
    } finally {
      identityClient.close();
      if (process.env.DATABASE_URL) await sql`drop schema ${sql.id(schema)} cascade`.execute(database.db);
      await database.close();
    }
  });

  const ids: Record<string, string> = {};
  beforeAll(async () => {
    for (const who of ["admin", "doctor", "researcher", "student"] as const) ids[who] = await identity.userId(who);
  });
});
