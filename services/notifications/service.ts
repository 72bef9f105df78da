import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { Kysely } from "kysely";
import { Role } from "../../gen/medmesh/access/v1/access_pb.js";
import {
  PreferenceSchema,
  SubscribeResponseSchema,
  TemplateSchema,
  type NotificationService,
  type Preference,
  type QuietHours as QuietHoursMessage,
} from "../../gen/medmesh/notifications/v1/notifications_pb.js";
import { callerOf } from "../../platform/grpc/caller.js";
import { encodedAs } from "../../platform/grpc/encoded.js";
import { invalidArgument, type FieldViolation } from "../../platform/grpc/errors.js";
import { roleNames, type Principal } from "../../platform/grpc/interceptors/access.js";
import {
  BUILT_IN,
  CHANNELS,
  channelName,
  channelValue,
  defaultMode,
  EMAIL_ONLY,
  MANDATORY,
  modeName,
  modeValue,
  TYPES,
  typeName,
  typeValue,
  VARIABLES,
  type TypeName,
} from "./catalog.js";
import { subscribeResponseBytes } from "./encoding.js";
import type { Feed } from "./feed.js";
import { toNotification } from "./model.js";
import { isTimeZone } from "./planner.js";
import type { NotificationStore, QuietHours } from "./store.js";
import type { ChannelName, ModeName, NotificationsDB, TemplateRow } from "./tables.js";
import { checkTemplate, MissingVariableError, render } from "./templates.js";

const DEFAULT_PAGE = 25;
const BACKLOG_BATCH = 200;

export interface ServiceDeps {
  store: NotificationStore;
  db: Kysely<NotificationsDB>;
  feed: Feed;
  vapidPublicKey: string;
  /** An announcement was queued: run the scheduler now rather than at its next tick. */
  announced(): void;
}

/** Who the caller is, for the feed: a user's id. Machines have no feed. */
function userOf(ctx: HandlerContext): Principal {
  const p = callerOf(ctx);
  if (p.kind !== "user") throw new ConnectError("only users have notifications", Code.PermissionDenied);
  return p;
}

const pageToken = (seq: number) => Buffer.from(`n:${seq}`).toString("base64url");
function fromPageToken(token: string): number {
  const m = /^n:(\d{1,18})$/.exec(Buffer.from(token, "base64url").toString());
  if (!m) throw invalidArgument([{ field: "page_token", description: "is not a token this service gave" }]);
  return Number(m[1]);
}

function toQuiet(q: QuietHours | undefined): QuietHoursMessage | undefined {
  return q
    ? {
        $typeName: "medmesh.notifications.v1.QuietHours",
        startMinute: q.start_minute,
        endMinute: q.end_minute,
        timeZone: q.time_zone,
      }
    : undefined;
}

function toTemplate(row: TemplateRow) {
  return create(TemplateSchema, {
    type: typeValue(row.type),
    version: row.version,
    subject: row.subject,
    htmlBody: row.html_body,
    textBody: row.text_body,
    variables: row.variables,
    availableVariables: Object.keys(VARIABLES[row.type as TypeName] ?? {}),
    createTime: timestampFromDate(new Date(row.created_at)),
    createdBy: row.created_by,
  });
}

export function notificationService(deps: ServiceDeps): ServiceImpl<typeof NotificationService> {
  const { store, feed } = deps;

  async function allPreferences(userId: string): Promise<Preference[]> {
    const chosen = await store.preferences(userId);
    const out: Preference[] = [];
    for (const type of TYPES)
      for (const channel of CHANNELS) {
        const mandatory = MANDATORY.has(type) || (EMAIL_ONLY.has(type) && channel === "email");
        const mode: ModeName =
          EMAIL_ONLY.has(type) && channel !== "email"
            ? "off"
            : (chosen.get(`${type}/${channel}`) ?? defaultMode(type, channel));
        out.push(
          create(PreferenceSchema, {
            type: typeValue(type),
            channel: channelValue(channel),
            mode: modeValue(mandatory && mode === "off" ? "immediate" : mode),
            mandatory,
          }),
        );
      }
    return out;
  }

  return {
    async *subscribe(req, ctx) {
      const user = userOf(ctx);
      // Listening before the first read: a notification made between the read and the first
      // wait reaches this call through the bus, and the numbers drop what the read already gave.
      const sub = feed.subscribe(user.subject);
      try {
        let unread = await store.unreadCount(user.subject);
        const after = Number(req.afterSequence);
        if (after > 0) {
          sub.last = after;
          for (;;) {
            const rows = await store.feedAfter(user.subject, sub.last, BACKLOG_BATCH);
            for (const r of rows) {
              sub.last = Number(r.seq);
              yield { notification: toNotification(r), unreadCount: BigInt(unread) };
            }
            if (rows.length < BACKLOG_BATCH) break;
          }
        } else {
          // What is unread now, then everything newer than the newest existing notification.
          let cursor = 0;
          const head = await store.feedHead(user.subject);
          for (;;) {
            const rows = (await store.feedAfter(user.subject, cursor, BACKLOG_BATCH, true)).filter(
              (r) => Number(r.seq) <= head,
            );
            for (const r of rows) {
              cursor = Number(r.seq);
              yield { notification: toNotification(r), unreadCount: BigInt(unread) };
            }
            if (rows.length < BACKLOG_BATCH) break;
          }
          sub.last = Math.max(sub.last, head);
        }
        for (;;) {
          const batch = await sub.next(ctx.signal);
          if (!batch) throw ConnectError.from(ctx.signal.reason ?? new ConnectError("cancelled", Code.Canceled));
          if (!Array.isArray(batch)) {
            // Read elsewhere: the count of what this stream has sent that is still unread.
            unread = await store.unreadCount(user.subject, sub.last);
            yield {
              unreadCount: BigInt(unread),
              read: { ids: batch.ids, allUpToSequence: BigInt(batch.allUpTo) },
            };
            continue;
          }
          for (const n of batch) {
            if (!n.readTime) unread++;
            feed.delivered++;
            // Encoded from the notification's own encoding, made once for all its streams.
            yield encodedAs(SubscribeResponseSchema, subscribeResponseBytes(n, unread));
          }
        }
      } finally {
        sub.close();
      }
    },

    async listNotifications(req, ctx) {
      const user = userOf(ctx);
      const size = req.pageSize || DEFAULT_PAGE;
      const before = req.pageToken ? fromPageToken(req.pageToken) : undefined;
      const rows = await store.page(user.subject, before, size + 1, req.unreadOnly);
      const page = rows.slice(0, size);
      return {
        notifications: page.map(toNotification),
        nextPageToken: rows.length > size ? pageToken(Number(page[page.length - 1]!.seq)) : "",
        unreadCount: BigInt(await store.unreadCount(user.subject)),
      };
    },

    async markRead(req, ctx) {
      const user = userOf(ctx);
      const ids = [...new Set(req.ids)];
      const mine = await store.owned(user.subject, ids);
      // Somebody else's id reads exactly like one that does not exist.
      const missing = ids.filter((id) => !mine.has(id));
      if (missing.length) throw new ConnectError(`notification ${missing[0]} does not exist`, Code.NotFound);
      const marked = await store.markRead(user.subject, ids, new Date());
      if (marked > 0) feed.announceRead({ userId: user.subject, ids, allUpTo: 0 });
      return { marked, unreadCount: BigInt(await store.unreadCount(user.subject)) };
    },

    async markAllRead(req, ctx) {
      const user = userOf(ctx);
      // Without a bound, the newest notification now is the bound: streams are told exactly what was read.
      const upTo = req.upToSequence > 0n ? Number(req.upToSequence) : await store.feedHead(user.subject);
      const marked = await store.markAllRead(user.subject, upTo, new Date());
      if (marked > 0) feed.announceRead({ userId: user.subject, ids: [], allUpTo: upTo });
      return { marked, unreadCount: BigInt(await store.unreadCount(user.subject)) };
    },

    async getPreferences(_req, ctx) {
      const user = userOf(ctx);
      return {
        preferences: await allPreferences(user.subject),
        quietHours: toQuiet(await store.quietHours(user.subject)),
      };
    },

    async updatePreferences(req, ctx) {
      const user = userOf(ctx);
      const problems: FieldViolation[] = [];
      const changes: Array<{ type: string; channel: ChannelName; mode: ModeName }> = [];
      req.preferences.forEach((p, i) => {
        const type = typeName(p.type);
        const channel = channelName(p.channel);
        const mode = modeName(p.mode);
        const field = `preferences[${i}]`;
        if ((MANDATORY.has(type) || EMAIL_ONLY.has(type)) && mode === "off")
          problems.push({
            field: `${field}.mode`,
            description: `${type} is a security notice and cannot be switched off`,
          });
        else if (EMAIL_ONLY.has(type) && channel !== "email")
          problems.push({ field: `${field}.channel`, description: `${type} is sent by email only` });
        else if (channel === "in_app" && mode !== "immediate" && mode !== "off")
          problems.push({
            field: `${field}.mode`,
            description: "the in-app feed is immediate or off; digests are for email and push",
          });
        else if (MANDATORY.has(type) && mode !== "immediate")
          problems.push({
            field: `${field}.mode`,
            description: `${type} is a security notice and is always sent at once`,
          });
        else changes.push({ type, channel, mode });
      });
      const q = req.quietHours;
      if (q && !isTimeZone(q.timeZone))
        problems.push({ field: "quiet_hours.time_zone", description: `"${q.timeZone}" is not an IANA time zone` });
      if (q && req.clearQuietHours)
        problems.push({ field: "clear_quiet_hours", description: "cannot be set together with quiet_hours" });
      if (problems.length) throw invalidArgument(problems);
      await store.setPreferences(
        user.subject,
        changes,
        req.clearQuietHours
          ? null
          : q && { start_minute: q.startMinute, end_minute: q.endMinute, time_zone: q.timeZone },
      );
      return {
        preferences: await allPreferences(user.subject),
        quietHours: toQuiet(await store.quietHours(user.subject)),
      };
    },

    async getPushConfig() {
      return { vapidPublicKey: deps.vapidPublicKey };
    },

    async registerPushSubscription(req, ctx) {
      const user = userOf(ctx);
      const s = req.subscription!;
      if (!/^https?:\/\//.test(s.endpoint))
        throw invalidArgument([{ field: "subscription.endpoint", description: "must be an http(s) URL" }]);
      const p256 = Buffer.from(s.p256dh, "base64url");
      if (p256.length !== 65 || p256[0] !== 4)
        throw invalidArgument([
          {
            field: "subscription.p256dh",
            description: "must be an uncompressed P-256 public key (65 bytes, base64url)",
          },
        ]);
      if (Buffer.from(s.auth, "base64url").length !== 16)
        throw invalidArgument([{ field: "subscription.auth", description: "must be 16 bytes, base64url" }]);
      const row = await store.putPushSubscription(user.subject, {
        endpoint: s.endpoint,
        p256dh: s.p256dh,
        auth: s.auth,
      });
      return {
        subscription: {
          id: row.id,
          endpoint: row.endpoint,
          p256dh: row.p256dh,
          auth: row.auth,
          createTime: timestampFromDate(new Date(row.created_at)),
        },
      };
    },

    async removePushSubscription(req, ctx) {
      const user = userOf(ctx);
      if (!(await store.removePushSubscription(user.subject, req.id)))
        throw new ConnectError(`push subscription ${req.id} does not exist`, Code.NotFound);
      return {};
    },

    async listTemplates() {
      return { templates: (await store.currentTemplates()).map(toTemplate) };
    },

    async putTemplate(req, ctx) {
      const admin = callerOf(ctx);
      const t = req.template!;
      const type = typeName(t.type);
      const variables = [...new Set(t.variables)];
      const empty = (
        [
          ["template.subject", t.subject],
          ["template.html_body", t.htmlBody],
          ["template.text_body", t.textBody],
        ] as const
      )
        .filter(([, v]) => !v.trim())
        .map(([field]) => ({
          field,
          description: "is required: every message has a subject, an HTML and a text part",
        }));
      if (empty.length) throw invalidArgument(empty);
      const problems = checkTemplate(type, { subject: t.subject, html: t.htmlBody, text: t.textBody }, variables);
      if (problems.length) throw invalidArgument(problems);
      const row = await store.putTemplate({
        type,
        subject: t.subject,
        html_body: t.htmlBody,
        text_body: t.textBody,
        variables,
        created_by: admin.subject,
      });
      return { template: toTemplate(row) };
    },

    async previewTemplate(req) {
      const t = req.template!;
      const type = typeName(t.type);
      let text;
      let key: string;
      if (t.htmlBody || t.textBody || t.subject) {
        const variables = [...new Set(t.variables)];
        const problems = checkTemplate(type, { subject: t.subject, html: t.htmlBody, text: t.textBody }, variables);
        if (problems.length) throw invalidArgument(problems);
        text = { subject: t.subject, html: t.htmlBody, text: t.textBody };
        key = `preview:${JSON.stringify(text)}`;
      } else {
        const row = await store.currentTemplate(type);
        text = row ? { subject: row.subject, html: row.html_body, text: row.text_body } : BUILT_IN[type];
        key = `${type}@${row?.version ?? 0}`;
      }
      try {
        return render(key, text, { ...VARIABLES[type], ...req.values });
      } catch (err) {
        if (err instanceof MissingVariableError) throw invalidArgument([{ field: "values", description: err.message }]);
        throw err;
      }
    },

    async sendAnnouncement(req, ctx) {
      const admin = callerOf(ctx);
      const now = new Date();
      const at = req.sendTime ? timestampDate(req.sendTime) : now;
      const sendAt = at < now ? now : at;
      const id = await store.addAnnouncement({
        title: req.title,
        body: req.body,
        role: req.role === Role.UNSPECIFIED ? null : roleNames.name(req.role),
        sendAt,
        createdBy: admin.subject,
      });
      deps.announced();
      return { announcementId: id, sendTime: timestampFromDate(sendAt) };
    },

    async getDeliveryStats(req) {
      const since = req.since ? timestampDate(req.since) : undefined;
      const rows = await store.stats(since);
      return {
        stats: rows.map((r) => ({
          channel: channelValue(r.channel),
          type: typeValue(r.type),
          state: r.state,
          count: BigInt(r.n),
          attempts: BigInt(r.attempts),
        })),
      };
    },
  };
}
