import { randomBytes } from "node:crypto";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openServiceDatabase, type Database } from "../../platform/db/database.js";
import { backends } from "../../test/support/backends.js";
import { migrations } from "./migrations/index.js";
import { afterQuietHours, digestDue, planMany, type Intent } from "./planner.js";
import { NotificationStore } from "./store.js";
import type { NotificationsDB } from "./tables.js";

/**
 * An announcement's page written in one statement (planMany → addPage): each in-app user numbered
 * next in their own feed, deliveries as each user chose, and a rerun of the page adding nothing.
 */
describe.each(backends())("an announcement page on $name", (backend) => {
  const schema = `notifications_page_${randomBytes(4).toString("hex")}`;
  let database: Database<NotificationsDB>;
  let store: NotificationStore;

  beforeAll(async () => {
    database = await openServiceDatabase<NotificationsDB>(
      "notifications-page-test",
      { DATABASE_URL: backend.env.DATABASE_URL, MEDMESH_DATA_DIR: "memory://", DB_POOL_MAX: 2 },
      schema,
      migrations,
    );
    store = new NotificationStore(database.db, schema);
  }, 60_000);

  afterAll(async () => {
    await sql`drop schema ${sql.id(schema)} cascade`.execute(database.db).catch(() => undefined);
    await database?.close();
  });

  const announcement = (id: string): Omit<Intent, "userId"> => ({
    type: "announcement",
    sourceKey: `announcement:${id}`,
    title: `Maintenance ${id}`,
    body: "Read-only from 22:00 UTC.",
    link: "",
    attributes: { announcement_id: id },
    variables: { title: `Maintenance ${id}`, body: "Read-only from 22:00 UTC." },
  });

  it("numbers each user's feed next, follows each user's choices, and a rerun adds nothing", async () => {
    const db = database.db;
    const [old, fresh, muted, quiet] = ["p-old", "p-fresh", "p-muted", "p-quiet"];
    // `old` already has a notification: the announcement is their second.
    await store.addNotification(db, {
      userId: old!,
      type: "welcome",
      title: "Welcome",
      body: "",
      link: "",
      attributes: {},
      sourceKey: "event:welcome-old",
    });
    await store.setPreferences(muted!, [{ type: "announcement", channel: "in_app", mode: "off" }], undefined);
    await store.setPreferences(quiet!, [{ type: "announcement", channel: "push", mode: "hourly" }], {
      start_minute: 0,
      end_minute: 1439,
      time_zone: "Europe/Paris",
    });
    const users = [old!, fresh!, muted!, quiet!];
    const emailable = new Set([fresh!, quiet!]);
    const now = new Date();

    const rows = await planMany(db, store, users, announcement("a1"), now, emailable);
    expect(rows.map((r) => [r.user_id, Number(r.seq)]).sort()).toEqual(
      [
        [old, 2],
        [fresh, 1],
        [quiet, 1],
      ].sort(),
    );
    // What comes back is what the table holds, though only ids, numbers and the time were read.
    const stored = await db
      .selectFrom("notification")
      .selectAll()
      .where("source_key", "=", "announcement:a1")
      .orderBy("user_id")
      .execute();
    const returned = [...rows].sort((a, b) => a.user_id.localeCompare(b.user_id));
    expect(returned.map((r) => ({ ...r, seq: Number(r.seq), created_at: new Date(r.created_at).getTime() }))).toEqual(
      stored.map((r) => ({ ...r, seq: Number(r.seq), created_at: new Date(r.created_at).getTime() })),
    );

    const deliveries = await db
      .selectFrom("delivery")
      .select(["user_id", "channel", "digest", "next_attempt_at", "variables", "state"])
      .where("source_key", "=", "announcement:a1")
      .orderBy("user_id")
      .orderBy("channel")
      .execute();
    const q = { start_minute: 0, end_minute: 1439, time_zone: "Europe/Paris" };
    expect(deliveries.map((d) => [d.user_id, d.channel, d.digest, new Date(d.next_attempt_at).getTime()])).toEqual([
      [fresh, "email", null, now.getTime()],
      [quiet, "email", null, afterQuietHours(now, q).getTime()],
      [quiet, "push", "hourly", digestDue(now, "hourly", q).getTime()],
    ]);
    expect(deliveries.every((d) => d.state === "queued")).toBe(true);
    expect(deliveries[0]!.variables).toMatchObject({ title: "Maintenance a1", body: "Read-only from 22:00 UTC." });

    // The page again (a run cut short and restarted): nothing new, no number taken.
    expect(await planMany(db, store, users, announcement("a1"), new Date(), emailable)).toEqual([]);
    expect(await store.feedHead(old!)).toBe(2);
    expect(await store.feedHead(fresh!)).toBe(1);
    const count = await db
      .selectFrom("delivery")
      .select((eb) => eb.fn.countAll<string>().as("n"))
      .where("source_key", "=", "announcement:a1")
      .executeTakeFirstOrThrow();
    expect(Number(count.n)).toBe(3);

    // A page partly served before: only the users it missed are added, each next in line.
    const next = await planMany(db, store, [old!], announcement("a2"), new Date());
    expect(next.map((r) => Number(r.seq))).toEqual([3]);
    const both = await planMany(db, store, [old!, fresh!], announcement("a2"), new Date());
    expect(both.map((r) => [r.user_id, Number(r.seq)])).toEqual([[fresh, 2]]);
    const feed = await store.feedAfter(old!, 0, 10);
    expect(feed.map((r) => Number(r.seq))).toEqual([1, 2, 3]);
  });
});
