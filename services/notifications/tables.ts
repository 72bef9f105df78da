import type { Generated, Selectable } from "kysely";
import type { InboxTable } from "../../platform/events/index.js";

// The notifications schema as kysely sees it.

export type ChannelName = "in_app" | "email" | "push";
export type ModeName = "immediate" | "hourly" | "daily" | "off";
/** queued: due at next_attempt_at; sending: claimed by a worker; sent/failed: final; skipped: nothing to send to. */
export type DeliveryState = "queued" | "sending" | "sent" | "failed" | "skipped";

export interface NotificationTable {
  id: string;
  user_id: string;
  /** Position in the user's feed, from feed_head: consecutive per user. */
  seq: string | number;
  type: string;
  title: string;
  body: string;
  link: string;
  attributes: Record<string, string>;
  /** What caused it (an event id, an announcement id): with user_id, unique. */
  source_key: string;
  created_at: Generated<Date>;
  read_at: Date | null;
}

export interface FeedHeadTable {
  user_id: string;
  last_seq: string | number;
}

export interface DeliveryTable {
  id: string;
  user_id: string;
  channel: ChannelName;
  type: string;
  source_key: string;
  /** Template variables (never a secret: links with tokens are fetched when the mail is written). */
  variables: Record<string, string>;
  /** For account links: identity's link id, turned into a token at send time. */
  link_id: string | null;
  /** Set for digest deliveries: sent together with the others of the user and channel at window end. */
  digest: ModeName | null;
  state: DeliveryState;
  attempts: Generated<number>;
  next_attempt_at: Date;
  claimed_until: Date | null;
  last_response: string | null;
  created_at: Generated<Date>;
  sent_at: Date | null;
}

export interface DeliveryAttemptTable {
  id: Generated<string | number>;
  delivery_id: string;
  at: Generated<Date>;
  outcome: "sent" | "retry" | "failed";
  response: string;
}

export interface PreferenceTable {
  user_id: string;
  type: string;
  channel: ChannelName;
  mode: ModeName;
}

export interface QuietHoursTable {
  user_id: string;
  start_minute: number;
  end_minute: number;
  time_zone: string;
}

export interface RecipientTable {
  user_id: string;
  email: string | null;
  first_name: string;
  role: string;
  updated_at: Generated<Date>;
}

export interface RecipientSyncTable {
  id: number;
  after_user_id: Generated<string>;
  completed_at: Date | null;
}

export interface TemplateTable {
  type: string;
  version: number;
  subject: string;
  html_body: string;
  text_body: string;
  variables: string[];
  created_by: string;
  created_at: Generated<Date>;
}

export interface PushSubscriptionTable {
  id: string;
  user_id: string;
  endpoint: string;
  p256dh: string;
  auth: string;
  created_at: Generated<Date>;
}

/** A push delivery reached this subscription (so a retry of the delivery leaves it out). */
export interface PushSentTable {
  delivery_id: string;
  subscription_id: string;
}

export interface AnnouncementTable {
  id: string;
  title: string;
  body: string;
  role: string | null;
  send_at: Date;
  created_by: string;
  started_at: Date | null;
  done_at: Date | null;
}

export interface NotificationsDB {
  notification: NotificationTable;
  feed_head: FeedHeadTable;
  delivery: DeliveryTable;
  delivery_attempt: DeliveryAttemptTable;
  preference: PreferenceTable;
  quiet_hours: QuietHoursTable;
  recipient: RecipientTable;
  recipient_sync: RecipientSyncTable;
  template: TemplateTable;
  push_subscription: PushSubscriptionTable;
  push_sent: PushSentTable;
  announcement: AnnouncementTable;
  inbox: InboxTable;
}

export type NotificationRow = Selectable<NotificationTable>;
export type DeliveryRow = Selectable<DeliveryTable>;
export type TemplateRow = Selectable<TemplateTable>;
export type PushSubscriptionRow = Selectable<PushSubscriptionTable>;
export type RecipientRow = Selectable<RecipientTable>;
