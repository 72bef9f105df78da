import { defaultMode, EMAIL_ONLY, MANDATORY, type TypeName } from "./catalog.js";
import type { NotificationStore, PageDelivery, QuietHours } from "./store.js";
import type { ChannelName, ModeName, NotificationRow, NotificationsDB } from "./tables.js";
import type { Kysely, Transaction } from "kysely";

export interface Intent {
  type: TypeName;
  userId: string;
  /** The cause: an event id or an announcement id. With the user and channel, unique. */
  sourceKey: string;
  /** What the in-app feed shows. */
  title: string;
  body: string;
  link: string;
  attributes: Record<string, string>;
  /** Template values for email (and the push payload is the in-app text). */
  variables: Record<string, string>;
  /** An account link identity turns into a token at send time. */
  linkId?: string;
}

type Db = Kysely<NotificationsDB> | Transaction<NotificationsDB>;

/** The minutes after local midnight at `at` in an IANA zone. */
export function localMinute(at: Date, timeZone: string): number {
  const parts = new Intl.DateTimeFormat("en-GB", { timeZone, hour: "2-digit", minute: "2-digit", hourCycle: "h23" })
    .formatToParts(at)
    .reduce<Record<string, string>>((o, p) => ((o[p.type] = p.value), o), {});
  return Number(parts.hour) * 60 + Number(parts.minute);
}

export function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat("en-GB", { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** When the quiet hours around `at` end, or `at` itself outside them. */
export function afterQuietHours(at: Date, q: QuietHours | undefined): Date {
  if (!q || q.start_minute === q.end_minute) return at;
  const now = localMinute(at, q.time_zone);
  const inside =
    q.start_minute < q.end_minute
      ? now >= q.start_minute && now < q.end_minute
      : now >= q.start_minute || now < q.end_minute;
  if (!inside) return at;
  const wait = (q.end_minute - now + 1440) % 1440;
  return new Date(at.getTime() + wait * 60_000 - (at.getTime() % 60_000));
}

/** The end of the digest window `at` falls in: the next full hour, or the next 08:00 in the user's zone. */
export function digestDue(at: Date, mode: ModeName, q: QuietHours | undefined): Date {
  if (mode === "hourly") return new Date(Math.floor(at.getTime() / 3_600_000 + 1) * 3_600_000);
  const zone = q?.time_zone ?? "UTC";
  const wait = (8 * 60 - localMinute(at, zone) + 1440) % 1440 || 1440;
  return new Date(at.getTime() + wait * 60_000 - (at.getTime() % 60_000));
}

/**
 * The same notice for many users (an announcement's page): what `plan` does for each, in two
 * statements for the whole page, one reading their choices and one writing notifications and
 * deliveries. The write is atomic by itself, so no transaction is needed around the two: a choice
 * changed in between is read as it was, just as a change right after the write would be.
 */
export async function planMany(
  db: Db,
  store: NotificationStore,
  userIds: string[],
  intent: Omit<Intent, "userId">,
  now: Date,
  /** Users with a known address: nobody else gets an email delivery that could only be skipped. */
  emailable?: ReadonlySet<string>,
): Promise<NotificationRow[]> {
  if (userIds.length === 0) return [];
  const { prefs, quiet } = await store.choicesOf(db, userIds, intent.type);
  const mandatory = MANDATORY.has(intent.type);
  const modeOf = (userId: string, channel: ChannelName): ModeName => {
    if (EMAIL_ONLY.has(intent.type) && channel !== "email") return "off";
    const chosen = prefs.get(`${userId}/${channel}`) ?? defaultMode(intent.type, channel);
    return mandatory ? "immediate" : chosen;
  };
  const deliveries: PageDelivery[] = [];
  for (const userId of userIds)
    for (const channel of ["email", "push"] as const) {
      const mode = modeOf(userId, channel);
      if (mode === "off" || (channel === "email" && emailable && !emailable.has(userId))) continue;
      const q = quiet.get(userId);
      deliveries.push({
        userId,
        channel,
        digest: mode === "immediate" ? undefined : mode,
        dueAt: mode === "immediate" ? (mandatory ? now : afterQuietHours(now, q)) : digestDue(now, mode, q),
      });
    }
  return store.addPage(db, {
    notification: {
      type: intent.type,
      title: intent.title,
      body: intent.body,
      link: intent.link,
      attributes: intent.attributes,
      sourceKey: intent.sourceKey,
    },
    inAppUserIds: userIds.filter((u) => modeOf(u, "in_app") !== "off"),
    deliveries,
    deliveryShared: {
      type: intent.type,
      sourceKey: intent.sourceKey,
      variables: { ...intent.variables, title: intent.title, body: intent.body, link_path: intent.link },
      linkId: intent.linkId,
    },
  });
}

/**
 * Turns one intent into what the user asked for: an in-app notification and email and push
 * deliveries, each per the user's choice for this type and channel, in the caller's transaction.
 * Returns the in-app row if one was made, to be announced once the transaction commits.
 */
export async function plan(
  trx: Db,
  store: NotificationStore,
  intent: Intent,
  now: Date,
): Promise<NotificationRow | undefined> {
  const prefs = await store.preferences(intent.userId, trx);
  const quiet = await store.quietHours(intent.userId, trx);
  const mandatory = MANDATORY.has(intent.type);
  const modeOf = (channel: ChannelName): ModeName => {
    const chosen = prefs.get(`${intent.type}/${channel}`) ?? defaultMode(intent.type, channel);
    if (EMAIL_ONLY.has(intent.type) && channel !== "email") return "off";
    // A mandatory notice goes out at once on every channel, whatever was stored.
    return mandatory ? "immediate" : chosen;
  };
  let row: NotificationRow | undefined;
  if (modeOf("in_app") !== "off")
    row = await store.addNotification(trx, {
      userId: intent.userId,
      type: intent.type,
      title: intent.title,
      body: intent.body,
      link: intent.link,
      attributes: intent.attributes,
      sourceKey: intent.sourceKey,
    });
  for (const channel of ["email", "push"] as const) {
    const mode = modeOf(channel);
    if (mode === "off") continue;
    const dueAt = mode === "immediate" ? (mandatory ? now : afterQuietHours(now, quiet)) : digestDue(now, mode, quiet);
    await store.addDelivery(trx, {
      userId: intent.userId,
      channel,
      type: intent.type,
      sourceKey: intent.sourceKey,
      variables: { ...intent.variables, title: intent.title, body: intent.body, link_path: intent.link },
      linkId: intent.linkId,
      digest: mode === "immediate" ? undefined : mode,
      dueAt,
    });
  }
  return row;
}
