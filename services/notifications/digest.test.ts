import { randomBytes, randomUUID } from "node:crypto";
import { sql } from "kysely";
import nodemailer from "nodemailer";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { serviceToken } from "../../platform/auth/service-token.js";
import { openServiceDatabase, type Database } from "../../platform/db/database.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { logger } from "../../platform/telemetry/logger.js";
import { backends } from "../../test/support/backends.js";
import { freePort } from "../../test/support/embedded-mesh.js";
import { startMailbox, type TestMailbox } from "../../test/support/mailbox.js";
import { migrations } from "./migrations/index.js";
import { digestDue } from "./planner.js";
import { pushSender, vapidKeys } from "./push.js";
import { deliverySender } from "./sender.js";
import { NotificationStore, type NewDelivery } from "./store.js";
import type { NotificationsDB } from "./tables.js";

/**
 * Digests end to end below the event consumers: deliveries held for an hourly window are sent as
 * one message per user when the window ends, to a real SMTP server, and never again.
 */
describe.each(backends())("email digests on $name", (backend) => {
  const schema = `notifications_digest_${randomBytes(4).toString("hex")}`;
  let database: Database<NotificationsDB>;
  let store: NotificationStore;
  let mailbox: TestMailbox;
  let sender: ReturnType<typeof deliverySender>;
  const token = serviceToken({ identityTarget: "127.0.0.1:1", apiKey: "unused" });

  beforeAll(async () => {
    database = await openServiceDatabase<NotificationsDB>(
      "notifications-digest-test",
      { DATABASE_URL: backend.env.DATABASE_URL, MEDMESH_DATA_DIR: "memory://", DB_POOL_MAX: 2 },
      schema,
      migrations,
    );
    store = new NotificationStore(database.db, schema);
    mailbox = await startMailbox();
    sender = deliverySender({
      store,
      mail: nodemailer.createTransport(mailbox.url),
      from: "medmesh <no-reply@medmesh.test>",
      // Digests name no account link, so identity is never asked; an unused port proves it.
      identity: createMeshClient(IdentityService, `127.0.0.1:${await freePort()}`),
      token,
      push: pushSender(vapidKeys({}, "memory://"), "mailto:admin@medmesh.test"),
      publicUrl: "http://medmesh.test",
      retryBaseMs: 50,
      retryMaxMs: 500,
      log: logger,
    });
  }, 60_000);

  afterAll(async () => {
    token.close();
    await mailbox?.stop();
    await sql`drop schema ${sql.id(schema)} cascade`.execute(database.db).catch(() => undefined);
    await database?.close();
  });

  const held = (userId: string, n: number, dueAt: Date): NewDelivery => ({
    userId,
    channel: "email",
    type: "document_processed",
    sourceKey: `event-${randomUUID()}`,
    variables: { title: `Paper ${n} processed`, body: `Entities and citations of paper ${n} are ready.` },
    digest: "hourly",
    dueAt,
  });

  it("holds a window's deliveries, then sends each user one message listing them, once", async () => {
    const ada = randomUUID();
    const ben = randomUUID();
    await store.upsertRecipient(database.db, {
      userId: ada,
      role: "doctor",
      email: "ada@medmesh.test",
      firstName: "Ada",
    });
    await store.upsertRecipient(database.db, {
      userId: ben,
      role: "researcher",
      email: "ben@medmesh.test",
      firstName: "Ben",
    });
    const now = new Date();
    const windowEnd = digestDue(now, "hourly", undefined);
    expect(windowEnd.getTime()).toBeGreaterThan(now.getTime());
    await store.addDeliveries(database.db, [held(ada, 1, windowEnd), held(ada, 2, windowEnd), held(ada, 3, windowEnd)]);
    await store.addDeliveries(database.db, [held(ben, 4, windowEnd)]);

    // Inside the window nothing is due: no mail.
    expect(await sender.runOnce(now)).toBe(0);
    expect(mailbox.messages).toHaveLength(0);

    // At its end, one message per user with every item of the window.
    const after = new Date(windowEnd.getTime() + 1_000);
    expect(await sender.runOnce(after)).toBe(4);
    const toAda = await mailbox.waitFor("Ada's digest", (m) => m.subject === "Your medmesh digest: 3 notifications");
    const toBen = await mailbox.waitFor("Ben's digest", (m) => m.subject === "Your medmesh digest: 1 notification");
    expect(mailbox.messages).toHaveLength(2);
    expect(toAda.to && "text" in toAda.to ? toAda.to.text : "").toBe("ada@medmesh.test");
    expect(toBen.to && "text" in toBen.to ? toBen.to.text : "").toBe("ben@medmesh.test");
    for (const n of [1, 2, 3]) {
      expect(toAda.text).toContain(`Paper ${n} processed: Entities and citations of paper ${n} are ready.`);
      expect(toAda.html).toContain(`<strong>Paper ${n} processed</strong>`);
    }
    expect(toAda.text).not.toContain("Paper 4");
    expect(toAda.text).toMatch(/^Hello Ada,/);

    // Every delivery of the window is recorded as sent, with one attempt.
    for (const d of [...(await store.deliveriesOf(ada)), ...(await store.deliveriesOf(ben))]) {
      expect(d.state).toBe("sent");
      expect(await store.attempts(d.id)).toHaveLength(1);
    }

    // Later rounds find nothing: a digest is never sent twice.
    expect(await sender.runOnce(new Date(windowEnd.getTime() + 3_600_000))).toBe(0);
    expect(mailbox.messages).toHaveLength(2);
  });

  it("escapes what the items say in the HTML part", async () => {
    const cy = randomUUID();
    await store.upsertRecipient(database.db, { userId: cy, role: "doctor", email: "cy@medmesh.test", firstName: "Cy" });
    const windowEnd = digestDue(new Date(), "hourly", undefined);
    const d = held(cy, 5, windowEnd);
    d.variables.title = `<script>alert("x")</script> & co`;
    await store.addDeliveries(database.db, [d]);
    await sender.runOnce(new Date(windowEnd.getTime() + 1_000));
    const mail = await mailbox.waitFor(
      "Cy's digest",
      (m) => m.to !== undefined && JSON.stringify(m.to).includes("cy@"),
    );
    expect(mail.html).not.toContain("<script>");
    expect(mail.html).toContain("&lt;script&gt;");
    expect(mail.text).toContain(`<script>alert("x")</script> & co`);
  });
});
