import { Channel, DeliveryMode, NotificationType } from "../../gen/medmesh/notifications/v1/notifications_pb.js";
import { enumNames } from "../../platform/grpc/enum-names.js";
import type { ChannelName, ModeName } from "./tables.js";

// What the service knows how to send: the notification types, what each provides to its template,
// the defaults users start from, and which ones nobody can switch off.

export type TypeName =
  | "document_processed"
  | "document_failed"
  | "document_indexed"
  | "welcome"
  | "email_verification"
  | "password_reset"
  | "new_sign_in"
  | "mfa_changed"
  | "role_changed"
  | "announcement";

export const typeNames = enumNames<NotificationType>(NotificationType, "NotificationType");
export const channelNames = enumNames<Channel>(Channel, "Channel");
export const modeNames = enumNames<DeliveryMode>(DeliveryMode, "DeliveryMode");

export const TYPES: TypeName[] = [
  "document_processed",
  "document_failed",
  "document_indexed",
  "welcome",
  "email_verification",
  "password_reset",
  "new_sign_in",
  "mfa_changed",
  "role_changed",
  "announcement",
];
export const CHANNELS: ChannelName[] = ["in_app", "email", "push"];

export const typeName = (t: NotificationType): TypeName => typeNames.name(t) as TypeName;
export const typeValue = (t: string): NotificationType => typeNames.value(t);
export const channelName = (c: Channel): ChannelName => channelNames.name(c) as ChannelName;
export const channelValue = (c: string): Channel => channelNames.value(c);
const modeByName: Record<ModeName, DeliveryMode> = {
  immediate: DeliveryMode.IMMEDIATE,
  hourly: DeliveryMode.HOURLY_DIGEST,
  daily: DeliveryMode.DAILY_DIGEST,
  off: DeliveryMode.OFF,
};
export const modeValue = (m: ModeName): DeliveryMode => modeByName[m];
export const modeName = (m: DeliveryMode): ModeName =>
  (Object.keys(modeByName) as ModeName[]).find((k) => modeByName[k] === m)!;

/**
 * Security notices (the list) and the account links a user asked for: always sent, never
 * held for a digest or quiet hours, since a late reset link or sign-in warning is worth little.
 */
export const MANDATORY: ReadonlySet<TypeName> = new Set([
  "password_reset",
  "email_verification",
  "new_sign_in",
  "mfa_changed",
]);

/** Types whose in-app entry would be pointless or unsafe (the mail carries a secret link): email only. */
export const EMAIL_ONLY: ReadonlySet<TypeName> = new Set(["email_verification", "password_reset"]);

/** Where a user starts, per type and channel, before changing anything. */
export function defaultMode(type: TypeName, channel: ChannelName): ModeName {
  if (EMAIL_ONLY.has(type)) return channel === "email" ? "immediate" : "off";
  if (channel === "in_app") return "immediate";
  if (MANDATORY.has(type)) return "immediate";
  if (channel === "email") return type === "document_processed" || type === "document_indexed" ? "daily" : "immediate";
  return type.startsWith("document_") ? "immediate" : "off";
}

/**
 * The variables each type provides to its templates, with sample values for previews. A template
 * may use only these, and a value a template declares is never rendered blank (rendering is strict).
 */
export const VARIABLES: Record<TypeName, Record<string, string>> = {
  document_processed: {
    first_name: "Ada",
    document_title: "Aspirin in secondary prevention",
    document_url: "http://localhost:8080/#/documents/0f8e…",
    pages: "12",
  },
  document_failed: {
    first_name: "Ada",
    document_title: "Aspirin in secondary prevention",
    document_url: "http://localhost:8080/#/documents/0f8e…",
    reason: "the file could not be read",
  },
  document_indexed: {
    first_name: "Ada",
    document_title: "Aspirin in secondary prevention",
    document_url: "http://localhost:8080/#/documents/0f8e…",
  },
  welcome: { first_name: "Ada", username: "ada", app_url: "http://localhost:8080/" },
  email_verification: {
    first_name: "Ada",
    link: "http://localhost:8080/#/verify-email?token=…",
    expires: "in 24 hours",
  },
  password_reset: {
    first_name: "Ada",
    link: "http://localhost:8080/#/reset-password?token=…",
    expires: "in 30 minutes",
  },
  new_sign_in: { first_name: "Ada", time: "2026-12-03 09:00 UTC", address: "203.0.113.7" },
  mfa_changed: { first_name: "Ada", change: "turned on", time: "2026-12-03 09:00 UTC" },
  role_changed: { first_name: "Ada", old_role: "student", new_role: "doctor" },
  announcement: { first_name: "Ada", title: "Maintenance tonight", body: "The platform is read-only from 22:00 UTC." },
};

/** Variables a type's template must use: without them the message is useless. */
export const REQUIRED: Partial<Record<TypeName, string[]>> = {
  email_verification: ["link"],
  password_reset: ["link"],
  announcement: ["body"],
};

export interface TemplateText {
  subject: string;
  html: string;
  text: string;
}

const hello = "Hello {{first_name}},";

/** Version 1 of every template. */
export const BUILT_IN: Record<TypeName, TemplateText> = {
  document_processed: {
    subject: "Processed: {{document_title}}",
    html: `<p>${hello}</p><p><strong>{{document_title}}</strong> has been processed ({{pages}} pages).</p><p><a href="{{document_url}}">Open it</a></p>`,
    text: `${hello}\n\n{{document_title}} has been processed ({{pages}} pages).\n\nOpen it: {{document_url}}\n`,
  },
  document_failed: {
    subject: "Processing failed: {{document_title}}",
    html: `<p>${hello}</p><p>We could not process <strong>{{document_title}}</strong>: {{reason}}.</p><p><a href="{{document_url}}">See the document</a></p>`,
    text: `${hello}\n\nWe could not process {{document_title}}: {{reason}}.\n\nSee the document: {{document_url}}\n`,
  },
  document_indexed: {
    subject: "Searchable now: {{document_title}}",
    html: `<p>${hello}</p><p><strong>{{document_title}}</strong> can now be found by search.</p><p><a href="{{document_url}}">Open it</a></p>`,
    text: `${hello}\n\n{{document_title}} can now be found by search.\n\nOpen it: {{document_url}}\n`,
  },
  welcome: {
    subject: "Welcome to medmesh, {{first_name}}",
    html: `<p>${hello}</p><p>Your account <strong>{{username}}</strong> is ready.</p><p><a href="{{app_url}}">Sign in</a></p>`,
    text: `${hello}\n\nYour account {{username}} is ready.\n\nSign in: {{app_url}}\n`,
  },
  email_verification: {
    subject: "Confirm your email address",
    html: `<p>${hello}</p><p>Confirm your address by opening this link ({{expires}}):</p><p><a href="{{link}}">Confirm my address</a></p><p>If you did not ask for this, ignore this message.</p>`,
    text: `${hello}\n\nConfirm your address by opening this link ({{expires}}):\n\n{{link}}\n\nIf you did not ask for this, ignore this message.\n`,
  },
  password_reset: {
    subject: "Reset your medmesh password",
    html: `<p>${hello}</p><p>Someone asked to reset your password. This link works once, {{expires}}:</p><p><a href="{{link}}">Choose a new password</a></p><p>If it was not you, ignore this message: your password stays as it is.</p>`,
    text: `${hello}\n\nSomeone asked to reset your password. This link works once, {{expires}}:\n\n{{link}}\n\nIf it was not you, ignore this message: your password stays as it is.\n`,
  },
  new_sign_in: {
    subject: "New sign-in to your account",
    html: `<p>${hello}</p><p>Your account was signed in to at {{time}} from {{address}}.</p><p>If this was not you, reset your password now.</p>`,
    text: `${hello}\n\nYour account was signed in to at {{time}} from {{address}}.\n\nIf this was not you, reset your password now.\n`,
  },
  mfa_changed: {
    subject: "Two-step sign-in was {{change}}",
    html: `<p>${hello}</p><p>Two-step sign-in was {{change}} for your account at {{time}}.</p><p>If this was not you, reset your password now.</p>`,
    text: `${hello}\n\nTwo-step sign-in was {{change}} for your account at {{time}}.\n\nIf this was not you, reset your password now.\n`,
  },
  role_changed: {
    subject: "Your role is now {{new_role}}",
    html: `<p>${hello}</p><p>An administrator changed your role from {{old_role}} to <strong>{{new_role}}</strong>.</p>`,
    text: `${hello}\n\nAn administrator changed your role from {{old_role}} to {{new_role}}.\n`,
  },
  announcement: {
    subject: "{{title}}",
    html: `<p>${hello}</p><p>{{body}}</p>`,
    text: `${hello}\n\n{{body}}\n`,
  },
};
