import { randomUUID } from "node:crypto";
import { sql, type Kysely, type Transaction } from "kysely";
import type {
  ChannelName,
  DeliveryRow,
  ModeName,
  NotificationRow,
  NotificationsDB,
  PushSubscriptionRow,
  RecipientRow,
  TemplateRow,
} from "./tables.js";

export interface NewNotification {
  userId: string;
  type: string;
  title: string;
  body: string;
  link: string;
  attributes: Record<string, string>;
  sourceKey: string;
}

export interface NewDelivery {
  userId: string;
  channel: Exclude<ChannelName, "in_app">;
  type: string;
  sourceKey: string;
  variables: Record<string, string>;
  linkId?: string;
  digest?: ModeName;
  dueAt: Date;
}

export interface QuietHours {
  start_minute: number;
  end_minute: number;
  time_zone: string;
}

/** One user's email or push delivery of a cause whose other fields a whole page shares. */
export type PageDelivery = Pick<NewDelivery, "userId" | "channel" | "digest" | "dueAt">;

type Db = Kysely<NotificationsDB> | Transaction<NotificationsDB>;

/** Every query of the notifications service; the schema is already scoped by openServiceDatabase. */
export class NotificationStore {
  constructor(
    readonly db: Kysely<NotificationsDB>,
    /** For the one raw statement (kysely's schema scoping does not reach raw SQL). */
    private readonly schema: string,
  ) {}

  // ---- the feed

  /**
   * Adds a notification to the user's feed with the next number, or nothing if this cause already
   * notified this user. Run inside the transaction that records the cause (the inbox row).
   */
  async addNotification(trx: Db, n: NewNotification): Promise<NotificationRow | undefined> {
    const seen = await trx
      .selectFrom("notification")
      .select("id")
      .where("source_key", "=", n.sourceKey)
      .where("user_id", "=", n.userId)
      .executeTakeFirst();
    if (seen) return undefined;
    // The head row's lock orders this user's inserts until commit (see migration 0002).
    const head = await trx
      .insertInto("feed_head")
      .values({ user_id: n.userId, last_seq: 1 })
      .onConflict((oc) => oc.column("user_id").doUpdateSet({ last_seq: sql`feed_head.last_seq + 1` }))
      .returning("last_seq")
      .executeTakeFirstOrThrow();
    return trx
      .insertInto("notification")
      .values({
        id: randomUUID(),
        user_id: n.userId,
        seq: head.last_seq,
        type: n.type,
        title: n.title,
        body: n.body,
        link: n.link,
        attributes: JSON.stringify(n.attributes) as never,
        source_key: n.sourceKey,
        read_at: null,
      })
      .returningAll()
      .executeTakeFirstOrThrow();
  }

  /**
   * One cause for a page of users (an announcement's page of recipients) in one statement: the
   * in-app users this cause has not reached yet are each numbered next in their own feed
   * (feed_head's row lock orders them, see migration 0002) and get their notification, and the
   * email and push deliveries are queued alongside, those that exist already left as they are.
   * A statement is atomic: a rerun that collides with a notification written meanwhile fails as a
   * whole, so no number is ever taken without its row. Only what the database chose (ids, numbers,
   * the time) comes back; the rest of each row is what was passed in.
   */
  async addPage(
    db: Db,
    page: {
      notification: Omit<NewNotification, "userId">;
      inAppUserIds: string[];
      deliveries: PageDelivery[];
      /** What the deliveries share (the cause's variables and account link). */
      deliveryShared: { type: string; sourceKey: string; variables: Record<string, string>; linkId?: string };
    },
  ): Promise<NotificationRow[]> {
    const n = page.notification;
    const d = page.deliveries;
    const s = page.deliveryShared;
    const table = (name: string) => sql.id(this.schema, name);
    const r = await sql<{ ids: string[] | null; users: string[] | null; seqs: string[] | null; at: Date }>`
      with fresh as (
        select u from unnest(cast(${page.inAppUserIds} as text[])) as u
        where not exists (select 1 from ${table("notification")} done where done.source_key = ${n.sourceKey} and done.user_id = u)
      ), heads as (
        insert into ${table("feed_head")} as f (user_id, last_seq)
        select u, 1 from fresh
        on conflict (user_id) do update set last_seq = f.last_seq + 1
        returning user_id, last_seq
      ), made as (
        insert into ${table("notification")} (id, user_id, seq, type, title, body, link, attributes, source_key)
        select gen_random_uuid(), h.user_id, h.last_seq, ${n.type}, ${n.title}, ${n.body}, ${n.link},
               cast(${JSON.stringify(n.attributes)} as jsonb), ${n.sourceKey}
        from heads h
        returning id, user_id, seq
      ), queued as (
        insert into ${table("delivery")} (id, user_id, channel, type, source_key, variables, link_id, digest, state, next_attempt_at)
        select gen_random_uuid(), q.user_id, q.channel, ${s.type}, ${s.sourceKey}, cast(${JSON.stringify(s.variables)} as jsonb),
               ${s.linkId ?? null}, q.digest, 'queued', q.due_at
        from unnest(cast(${d.map((x) => x.userId)} as text[]), cast(${d.map((x) => x.channel)} as text[]),
                    cast(${d.map((x) => x.digest ?? null)} as text[]), cast(${d.map((x) => x.dueAt.toISOString())} as timestamptz[]))
             as q(user_id, channel, digest, due_at)
        on conflict (source_key, user_id, channel) do nothing
      )
      select array_agg(cast(id as text)) as ids, array_agg(user_id) as users, array_agg(cast(seq as text)) as seqs,
             now() as at
      from made`.execute(db);
    const { ids, users, seqs, at } = r.rows[0]!;
    if (!ids) return [];
    // The column's default is now(), the transaction's time: the same value for every row.
    const createdAt = new Date(at);
    return ids.map((id, i) => ({
      id,
      user_id: users![i]!,
      seq: seqs![i]!,
      type: n.type,
      title: n.title,
      body: n.body,
      link: n.link,
      attributes: n.attributes,
      source_key: n.sourceKey,
      created_at: createdAt,
      read_at: null,
    }));
  }

  /** Many deliveries in one statement; those that exist already are left as they are. */
  async addDeliveries(trx: Db, ds: NewDelivery[]): Promise<void> {
    if (ds.length === 0) return;
    await trx
      .insertInto("delivery")
      .values(
        ds.map((d) => ({
          id: randomUUID(),
          user_id: d.userId,
          channel: d.channel,
          type: d.type,
          source_key: d.sourceKey,
          variables: JSON.stringify(d.variables) as never,
          link_id: d.linkId ?? null,
          digest: d.digest ?? null,
          state: "queued" as const,
          next_attempt_at: d.dueAt,
          claimed_until: null,
          last_response: null,
          sent_at: null,
        })),
      )
      .onConflict((oc) => oc.columns(["source_key", "user_id", "channel"]).doNothing())
      .execute();
  }

  /** The stored choices of many users for one type, and their quiet hours, in one statement. */
  async choicesOf(db: Db, userIds: string[], type: string) {
    const rows = await db
      .selectFrom("preference")
      .select("user_id")
      .select([
        sql<ChannelName | null>`channel`.as("channel"),
        sql<ModeName | null>`mode`.as("mode"),
        sql<number | null>`null::integer`.as("start_minute"),
        sql<number | null>`null::integer`.as("end_minute"),
        sql<string | null>`null::text`.as("time_zone"),
      ])
      .where("user_id", "=", anyOf(userIds))
      .where("type", "=", type)
      .unionAll(
        db
          .selectFrom("quiet_hours")
          .select("user_id")
          .select([sql<ChannelName | null>`null::text`.as("channel"), sql<ModeName | null>`null::text`.as("mode")])
          .select([
            sql<number | null>`start_minute`.as("start_minute"),
            sql<number | null>`end_minute`.as("end_minute"),
            sql<string | null>`time_zone`.as("time_zone"),
          ])
          .where("user_id", "=", anyOf(userIds)),
      )
      .execute();
    const prefs = new Map<string, ModeName>();
    const quiet = new Map<string, QuietHours>();
    for (const r of rows)
      if (r.time_zone === null) prefs.set(`${r.user_id}/${r.channel}`, r.mode!);
      else quiet.set(r.user_id, { start_minute: r.start_minute!, end_minute: r.end_minute!, time_zone: r.time_zone });
    return { prefs, quiet };
  }

  /** The number of the user's newest notification, 0 for none. */
  async feedHead(userId: string): Promise<number> {
    const r = await this.db.selectFrom("feed_head").select("last_seq").where("user_id", "=", userId).executeTakeFirst();
    return r ? Number(r.last_seq) : 0;
  }

  /** The user's notifications after a sequence number, oldest first. */
  feedAfter(userId: string, afterSeq: number, limit: number, unreadOnly = false): Promise<NotificationRow[]> {
    return this.db
      .selectFrom("notification")
      .selectAll()
      .where("user_id", "=", userId)
      .where("seq", ">", String(afterSeq))
      .$if(unreadOnly, (q) => q.where("read_at", "is", null))
      .orderBy("seq")
      .limit(limit)
      .execute();
  }

  /** Newest first, below a sequence number (exclusive) when given. */
  page(userId: string, beforeSeq: number | undefined, limit: number, unreadOnly: boolean): Promise<NotificationRow[]> {
    return this.db
      .selectFrom("notification")
      .selectAll()
      .where("user_id", "=", userId)
      .$if(beforeSeq !== undefined, (q) => q.where("seq", "<", String(beforeSeq)))
      .$if(unreadOnly, (q) => q.where("read_at", "is", null))
      .orderBy("seq", "desc")
      .limit(limit)
      .execute();
  }

  /** Unread notifications of the user, up to a number when given (what a stream has sent). */
  async unreadCount(userId: string, upToSeq?: number): Promise<number> {
    const r = await this.db
      .selectFrom("notification")
      .select((eb) => eb.fn.countAll<string>().as("n"))
      .where("user_id", "=", userId)
      .where("read_at", "is", null)
      .$if(upToSeq !== undefined, (q) => q.where("seq", "<=", String(upToSeq)))
      .executeTakeFirstOrThrow();
    return Number(r.n);
  }

  /** Which of these ids are the user's; the others are somebody else's or do not exist. */
  async owned(userId: string, ids: string[]): Promise<Set<string>> {
    const rows = await this.db
      .selectFrom("notification")
      .select("id")
      .where("user_id", "=", userId)
      .where("id", "in", ids)
      .execute();
    return new Set(rows.map((r) => r.id));
  }

  async markRead(userId: string, ids: string[], at: Date): Promise<number> {
    const r = await this.db
      .updateTable("notification")
      .set({ read_at: at })
      .where("user_id", "=", userId)
      .where("id", "in", ids)
      .where("read_at", "is", null)
      .executeTakeFirst();
    return Number(r.numUpdatedRows);
  }

  async markAllRead(userId: string, upToSeq: number | undefined, at: Date): Promise<number> {
    const r = await this.db
      .updateTable("notification")
      .set({ read_at: at })
      .where("user_id", "=", userId)
      .where("read_at", "is", null)
      .$if(upToSeq !== undefined, (q) => q.where("seq", "<=", String(upToSeq)))
      .executeTakeFirst();
    return Number(r.numUpdatedRows);
  }

  // ---- deliveries

  /** Queues a delivery unless this cause already has one for this user and channel. */
  async addDelivery(trx: Db, d: NewDelivery): Promise<boolean> {
    const r = await trx
      .insertInto("delivery")
      .values({
        id: randomUUID(),
        user_id: d.userId,
        channel: d.channel,
        type: d.type,
        source_key: d.sourceKey,
        variables: JSON.stringify(d.variables) as never,
        link_id: d.linkId ?? null,
        digest: d.digest ?? null,
        state: "queued",
        next_attempt_at: d.dueAt,
        claimed_until: null,
        last_response: null,
        sent_at: null,
      })
      .onConflict((oc) => oc.columns(["source_key", "user_id", "channel"]).doNothing())
      .returning("id")
      .executeTakeFirst();
    return r !== undefined;
  }

  /**
   * Claims due deliveries for `leaseMs`, and with each due digest delivery every other held one of
   * the same user and channel whose window has also ended. A claim whose lease ran out (a worker
   * died mid-send) is due again: at least once, never lost.
   */
  async claimDue(now: Date, limit: number, leaseMs: number): Promise<DeliveryRow[]> {
    return this.db.transaction().execute(async (trx) => {
      const due = await trx
        .selectFrom("delivery")
        .select("id")
        .where((eb) =>
          eb.or([
            eb.and([eb("state", "=", "queued"), eb("next_attempt_at", "<=", now)]),
            eb.and([eb("state", "=", "sending"), eb("claimed_until", "<", now)]),
          ]),
        )
        .orderBy("next_attempt_at")
        .limit(limit)
        .forUpdate()
        .skipLocked()
        .execute();
      if (due.length === 0) return [];
      return trx
        .updateTable("delivery")
        .set({ state: "sending", claimed_until: new Date(now.getTime() + leaseMs) })
        .where(
          "id",
          "in",
          due.map((d) => d.id),
        )
        .returningAll()
        .execute();
    });
  }

  async recordAttempt(
    id: string,
    outcome: "sent" | "retry" | "failed" | "skipped",
    response: string,
    retryAt?: Date,
  ): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      await trx
        .insertInto("delivery_attempt")
        .values({ delivery_id: id, outcome: outcome === "skipped" ? "failed" : outcome, response })
        .execute();
      await trx
        .updateTable("delivery")
        .set((eb) => ({
          attempts: eb("attempts", "+", 1),
          last_response: response.slice(0, 2000),
          claimed_until: null,
          state: outcome === "retry" ? "queued" : outcome,
          next_attempt_at: retryAt ?? sql`next_attempt_at`,
          sent_at: outcome === "sent" ? new Date() : null,
        }))
        .where("id", "=", id)
        .execute();
    });
  }

  async attempts(deliveryId: string) {
    return this.db
      .selectFrom("delivery_attempt")
      .selectAll()
      .where("delivery_id", "=", deliveryId)
      .orderBy("id")
      .execute();
  }

  deliveriesOf(userId: string): Promise<DeliveryRow[]> {
    return this.db.selectFrom("delivery").selectAll().where("user_id", "=", userId).orderBy("created_at").execute();
  }

  async stats(since: Date | undefined) {
    const deliveries = await this.db
      .selectFrom("delivery")
      .select(["channel", "type", "state"])
      .select((eb) => [eb.fn.countAll<string>().as("n"), eb.fn.sum<string>("attempts").as("attempts")])
      .$if(since !== undefined, (q) => q.where("created_at", ">=", since!))
      .groupBy(["channel", "type", "state"])
      .execute();
    const inApp = await this.db
      .selectFrom("notification")
      .select(["type"])
      .select((eb) => eb.fn.countAll<string>().as("n"))
      .$if(since !== undefined, (q) => q.where("created_at", ">=", since!))
      .groupBy("type")
      .execute();
    return [
      ...inApp.map((r) => ({ channel: "in_app", type: r.type, state: "sent", n: Number(r.n), attempts: Number(r.n) })),
      ...deliveries.map((r) => ({
        channel: r.channel as string,
        type: r.type,
        state: r.state === "sending" ? "queued" : (r.state as string),
        n: Number(r.n),
        attempts: Number(r.attempts ?? 0),
      })),
    ];
  }

  // ---- preferences

  async preferences(userId: string, db: Db = this.db): Promise<Map<string, ModeName>> {
    const rows = await db.selectFrom("preference").selectAll().where("user_id", "=", userId).execute();
    return new Map(rows.map((r) => [`${r.type}/${r.channel}`, r.mode]));
  }

  async setPreferences(
    userId: string,
    prefs: Array<{ type: string; channel: ChannelName; mode: ModeName }>,
    quiet: QuietHours | null | undefined,
  ): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      if (prefs.length)
        await trx
          .insertInto("preference")
          .values(prefs.map((p) => ({ user_id: userId, ...p })))
          .onConflict((oc) =>
            oc.columns(["user_id", "type", "channel"]).doUpdateSet((eb) => ({ mode: eb.ref("excluded.mode") })),
          )
          .execute();
      if (quiet === null) await trx.deleteFrom("quiet_hours").where("user_id", "=", userId).execute();
      else if (quiet)
        await trx
          .insertInto("quiet_hours")
          .values({ user_id: userId, ...quiet })
          .onConflict((oc) =>
            oc.column("user_id").doUpdateSet({
              start_minute: quiet.start_minute,
              end_minute: quiet.end_minute,
              time_zone: quiet.time_zone,
            }),
          )
          .execute();
    });
  }

  quietHours(userId: string, db: Db = this.db): Promise<QuietHours | undefined> {
    return db
      .selectFrom("quiet_hours")
      .select(["start_minute", "end_minute", "time_zone"])
      .where("user_id", "=", userId)
      .executeTakeFirst();
  }

  // ---- recipients (learned from user.events and from callers)

  async upsertRecipient(trx: Db, r: { userId: string; role: string; email?: string; firstName?: string }) {
    await trx
      .insertInto("recipient")
      .values({ user_id: r.userId, role: r.role, email: r.email ?? null, first_name: r.firstName ?? "" })
      .onConflict((oc) =>
        oc.column("user_id").doUpdateSet((eb) => ({
          role: eb.ref("excluded.role"),
          email: r.email === undefined ? eb.ref("recipient.email") : eb.ref("excluded.email"),
          first_name: r.firstName === undefined ? eb.ref("recipient.first_name") : eb.ref("excluded.first_name"),
          updated_at: new Date(),
        })),
      )
      .execute();
  }

  recipientSync(): Promise<{ after_user_id: string; completed_at: Date | null } | undefined> {
    return this.db.selectFrom("recipient_sync").select(["after_user_id", "completed_at"]).executeTakeFirst();
  }

  /**
   * Accounts copied from identity: new ones are added, known ones only get an address or a name
   * they lack. Their role is left alone, since user.events may already have brought a newer one
   * than the copy read. Records how far the copy got in the same transaction.
   */
  async fillRecipients(
    trx: Db,
    rows: { userId: string; role: string; email: string; firstName: string }[],
    progress: { afterUserId: string; complete: boolean },
  ): Promise<void> {
    if (rows.length > 0) {
      await trx
        .insertInto("recipient")
        .values(rows.map((r) => ({ user_id: r.userId, role: r.role, email: r.email || null, first_name: r.firstName })))
        .onConflict((oc) =>
          oc.column("user_id").doUpdateSet((eb) => ({
            email: eb.fn.coalesce("recipient.email", "excluded.email"),
            first_name: sql<string>`case when recipient.first_name = '' then excluded.first_name else recipient.first_name end`,
          })),
        )
        .execute();
    }
    await trx
      .insertInto("recipient_sync")
      .values({ id: 1, after_user_id: progress.afterUserId, completed_at: progress.complete ? new Date() : null })
      .onConflict((oc) =>
        oc.column("id").doUpdateSet((eb) => ({
          after_user_id: eb.ref("excluded.after_user_id"),
          completed_at: eb.ref("excluded.completed_at"),
        })),
      )
      .execute();
  }

  recipient(userId: string, db: Db = this.db): Promise<RecipientRow | undefined> {
    return db.selectFrom("recipient").selectAll().where("user_id", "=", userId).executeTakeFirst();
  }

  /** A page of recipients in id order: only what an announcement needs (who, and whether mail can reach them). */
  recipientsAfter(
    role: string | null,
    afterUserId: string,
    limit: number,
  ): Promise<Pick<RecipientRow, "user_id" | "email">[]> {
    return this.db
      .selectFrom("recipient")
      .select(["user_id", "email"])
      .$if(role !== null, (q) => q.where("role", "=", role!))
      .where("user_id", ">", afterUserId)
      .orderBy("user_id")
      .limit(limit)
      .execute();
  }

  // ---- templates

  currentTemplates(): Promise<TemplateRow[]> {
    return this.db
      .selectFrom("template as t")
      .selectAll()
      .where("version", "=", (eb) =>
        eb
          .selectFrom("template as u")
          .select((e) => e.fn.max("u.version").as("v"))
          .whereRef("u.type", "=", "t.type"),
      )
      .execute();
  }

  currentTemplate(type: string): Promise<TemplateRow | undefined> {
    return this.db
      .selectFrom("template")
      .selectAll()
      .where("type", "=", type)
      .orderBy("version", "desc")
      .limit(1)
      .executeTakeFirst();
  }

  /** Version 1 of each type, once; a template an admin saved is never overwritten. */
  async seedTemplates(rows: Array<Omit<TemplateRow, "created_at" | "version">>): Promise<void> {
    await this.db
      .insertInto("template")
      .values(rows.map((r) => ({ ...r, version: 1, variables: JSON.stringify(r.variables) as never })))
      .onConflict((oc) => oc.columns(["type", "version"]).doNothing())
      .execute();
  }

  /** The next version; two admins saving at once get two versions, the later one current. */
  async putTemplate(t: Omit<TemplateRow, "created_at" | "version">): Promise<TemplateRow> {
    for (let tries = 0; ; tries++) {
      try {
        return await this.db
          .insertInto("template")
          .columns(["type", "version", "subject", "html_body", "text_body", "variables", "created_by"])
          .expression((eb) =>
            eb
              .selectFrom("template")
              .select([
                sql<string>`${t.type}`.as("type"),
                sql<number>`coalesce(max(version), 0) + 1`.as("version"),
                sql<string>`${t.subject}`.as("subject"),
                sql<string>`${t.html_body}`.as("html_body"),
                sql<string>`${t.text_body}`.as("text_body"),
                sql<string>`cast(${JSON.stringify(t.variables)} as jsonb)`.as("variables"),
                sql<string>`${t.created_by}`.as("created_by"),
              ])
              .where("type", "=", t.type),
          )
          .returningAll()
          .executeTakeFirstOrThrow();
      } catch (err) {
        if (tries < 3 && (err as { code?: string }).code === "23505") continue;
        throw err;
      }
    }
  }

  // ---- push subscriptions

  async putPushSubscription(userId: string, s: { endpoint: string; p256dh: string; auth: string }) {
    // An endpoint belongs to one browser: registering it again (even by another user of that
    // browser) moves it, so pushes never reach the previous user.
    return this.db
      .insertInto("push_subscription")
      .values({ id: randomUUID(), user_id: userId, ...s })
      .onConflict((oc) =>
        oc.column("endpoint").doUpdateSet({ user_id: userId, p256dh: s.p256dh, auth: s.auth, created_at: new Date() }),
      )
      .returningAll()
      .executeTakeFirstOrThrow();
  }

  async removePushSubscription(userId: string, id: string): Promise<boolean> {
    const r = await this.db
      .deleteFrom("push_subscription")
      .where("id", "=", id)
      .where("user_id", "=", userId)
      .executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }

  async dropPushSubscription(id: string): Promise<void> {
    await this.db.deleteFrom("push_subscription").where("id", "=", id).execute();
  }

  pushSubscriptions(userId: string): Promise<PushSubscriptionRow[]> {
    return this.db.selectFrom("push_subscription").selectAll().where("user_id", "=", userId).execute();
  }

  /** The user's subscriptions a push delivery has not reached yet. */
  pushSubscriptionsNotSent(userId: string, deliveryId: string): Promise<PushSubscriptionRow[]> {
    return this.db
      .selectFrom("push_subscription as s")
      .selectAll("s")
      .where("s.user_id", "=", userId)
      .where(({ not, exists, selectFrom }) =>
        not(
          exists(
            selectFrom("push_sent as p")
              .select("p.subscription_id")
              .where("p.delivery_id", "=", deliveryId)
              .whereRef("p.subscription_id", "=", "s.id"),
          ),
        ),
      )
      .execute();
  }

  /** Whether a push delivery has reached any subscription. */
  async pushReachedAny(deliveryId: string): Promise<boolean> {
    const r = await this.db
      .selectFrom("push_sent")
      .select("subscription_id")
      .where("delivery_id", "=", deliveryId)
      .limit(1)
      .executeTakeFirst();
    return r !== undefined;
  }

  /** The push delivery reached this subscription: a retry of it leaves the subscription out. */
  async pushSent(deliveryId: string, subscriptionId: string): Promise<void> {
    await this.db
      .insertInto("push_sent")
      .values({ delivery_id: deliveryId, subscription_id: subscriptionId })
      .onConflict((oc) => oc.doNothing())
      .execute();
  }

  // ---- announcements

  async addAnnouncement(a: { title: string; body: string; role: string | null; sendAt: Date; createdBy: string }) {
    const id = randomUUID();
    await this.db
      .insertInto("announcement")
      .values({
        id,
        title: a.title,
        body: a.body,
        role: a.role,
        send_at: a.sendAt,
        created_by: a.createdBy,
        started_at: null,
        done_at: null,
      })
      .execute();
    return id;
  }

  /** Due announcements not finished yet (a run that died half-way is picked up again; unique keys absorb the repeat). */
  dueAnnouncements(now: Date) {
    return this.db
      .selectFrom("announcement")
      .selectAll()
      .where("send_at", "<=", now)
      .where("done_at", "is", null)
      .orderBy("send_at")
      .limit(10)
      .execute();
  }

  async finishAnnouncement(id: string, at: Date) {
    await this.db.updateTable("announcement").set({ done_at: at }).where("id", "=", id).execute();
  }
}

/**
 * `= any(array)`: a page of a thousand users is one parameter rather than a thousand, which the
 * embedded database parses and plans in a fraction of the time (about half, measured with PGlite).
 */
function anyOf(values: string[]) {
  return sql<string>`any(cast(${values} as text[]))`;
}
