import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { Transporter } from "nodemailer";
import Handlebars from "handlebars";
import type { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import type { ServiceToken } from "../../platform/auth/service-token.js";
import type { Logger } from "../../platform/telemetry/logger.js";
import { BUILT_IN, type TypeName } from "./catalog.js";
import type { PushSender } from "./push.js";
import type { NotificationStore } from "./store.js";
import type { DeliveryRow } from "./tables.js";
import { MissingVariableError, render } from "./templates.js";

export interface SenderDeps {
  store: NotificationStore;
  mail: Transporter;
  from: string;
  identity: Client<typeof IdentityService>;
  token: ServiceToken;
  push: PushSender;
  publicUrl: string;
  retryBaseMs: number;
  retryMaxMs: number;
  log: Logger;
}

type Outcome = { kind: "sent" | "retry" | "failed" | "skipped"; response: string };

class Permanent extends Error {}

/** SMTP replies 5xx are final; 4xx, timeouts and connection failures pass (the mail is kept and retried). */
function smtpOutcome(err: unknown): Outcome {
  const e = err as { responseCode?: number; response?: string; code?: string; message?: string };
  const response = e.response ?? `${e.code ?? "error"}: ${e.message ?? String(err)}`;
  if (typeof e.responseCode === "number" && e.responseCode >= 500) return { kind: "failed", response };
  return { kind: "retry", response };
}

/** What identity answered, as an outcome: a used or expired link is final, an outage is not. */
function identityOutcome(err: unknown): Outcome {
  if (err instanceof ConnectError) {
    const transient = [Code.Unavailable, Code.DeadlineExceeded, Code.Canceled, Code.ResourceExhausted, Code.Aborted];
    return { kind: transient.includes(err.code) ? "retry" : "failed", response: `identity: ${err.rawMessage}` };
  }
  return { kind: "retry", response: `identity: ${(err as Error).message}` };
}

const digestHtml = Handlebars.create().compile(
  `<p>Hello {{first_name}},</p><p>Here is what happened:</p><ul>{{#each items}}<li><strong>{{title}}</strong> — {{body}}</li>{{/each}}</ul><p><a href="{{app_url}}">Open medmesh</a></p>`,
  { strict: true },
);

/**
 * Sends what is due: claims deliveries, sends each outside any transaction, records the attempt.
 * A transient failure comes back later with exponential backoff and no limit on tries (a down SMTP
 * server delays mail, it never loses it); a permanent one (5xx, 410, a used link) ends it.
 */
export function deliverySender(deps: SenderDeps) {
  const { store, log } = deps;

  const backoff = (attempts: number) => {
    const cap = Math.min(deps.retryMaxMs, deps.retryBaseMs * 2 ** Math.min(attempts, 20));
    return cap / 2 + Math.random() * (cap / 2);
  };

  async function email(d: DeliveryRow): Promise<Outcome> {
    const who = await store.recipient(d.user_id);
    const variables: Record<string, string> = { first_name: who?.first_name || "there", ...d.variables };
    let to = who?.email ?? undefined;
    if (d.link_id) {
      let link;
      try {
        link = await deps.token.call((headers) => deps.identity.issueAccountLink({ linkId: d.link_id! }, { headers }));
      } catch (err) {
        return identityOutcome(err);
      }
      to = link.email;
      if (link.firstName) variables.first_name = link.firstName;
      const page = link.purpose === "password_reset" ? "reset-password" : "verify-email";
      variables.link = `${deps.publicUrl}/#/${page}?token=${encodeURIComponent(link.token)}`;
    }
    if (!to) return { kind: "skipped", response: "no email address is known for this user" };
    const tpl = await store.currentTemplate(d.type);
    const text = tpl
      ? { subject: tpl.subject, html: tpl.html_body, text: tpl.text_body }
      : BUILT_IN[d.type as TypeName];
    let message;
    try {
      message = render(`${d.type}@${tpl?.version ?? 0}`, text, variables);
    } catch (err) {
      if (err instanceof MissingVariableError) return { kind: "failed", response: `template: ${err.message}` };
      throw err;
    }
    try {
      const info = await deps.mail.sendMail({ from: deps.from, to, ...message });
      return { kind: "sent", response: String(info.response ?? "sent") };
    } catch (err) {
      return smtpOutcome(err);
    }
  }

  async function digest(rows: DeliveryRow[]): Promise<Outcome> {
    const who = await store.recipient(rows[0]!.user_id);
    if (!who?.email) return { kind: "skipped", response: "no email address is known for this user" };
    const items = rows.map((r) => ({ title: r.variables.title ?? r.type, body: r.variables.body ?? "" }));
    const first_name = who.first_name || "there";
    const text = `Hello ${first_name},\n\nHere is what happened:\n\n${items.map((i) => `- ${i.title}: ${i.body}`).join("\n")}\n\nOpen medmesh: ${deps.publicUrl}/\n`;
    try {
      const info = await deps.mail.sendMail({
        from: deps.from,
        to: who.email,
        subject: `Your medmesh digest: ${items.length} notification${items.length === 1 ? "" : "s"}`,
        text,
        html: digestHtml({ first_name, items, app_url: `${deps.publicUrl}/` }),
      });
      return { kind: "sent", response: String(info.response ?? "sent") };
    } catch (err) {
      return smtpOutcome(err);
    }
  }

  async function push(d: DeliveryRow): Promise<Outcome> {
    // A retry goes only to the subscriptions the earlier attempts did not reach.
    const subs = await store.pushSubscriptionsNotSent(d.user_id, d.id);
    if (subs.length === 0)
      return d.attempts > 0 && (await store.pushReachedAny(d.id))
        ? { kind: "sent", response: "every subscription had it already" }
        : { kind: "skipped", response: "no push subscription" };
    const payload = JSON.stringify({
      type: d.type,
      title: d.variables.title ?? "",
      body: d.variables.body ?? "",
      link: d.variables.link_path ?? "",
    });
    const results = await Promise.all(subs.map((s) => deps.push.send(s, payload).then((r) => ({ s, r }))));
    for (const { s, r } of results) {
      if (r.kind === "gone") await store.dropPushSubscription(s.id);
      else if (r.kind === "sent") await store.pushSent(d.id, s.id);
    }
    const response = results.map(({ r }) => r.response).join("; ");
    if (results.some(({ r }) => r.kind === "retry")) return { kind: "retry", response };
    if (results.some(({ r }) => r.kind === "sent")) return { kind: "sent", response };
    return { kind: "failed", response };
  }

  async function record(d: DeliveryRow, o: Outcome): Promise<void> {
    const retryAt = o.kind === "retry" ? new Date(Date.now() + backoff(d.attempts)) : undefined;
    await store.recordAttempt(d.id, o.kind, o.response, retryAt);
    if (o.kind !== "sent")
      log.info("delivery not sent", { delivery_id: d.id, channel: d.channel, outcome: o.kind, response: o.response });
  }

  /**
   * One round: what is due at `now` (the clock, except in tests that look past a digest window).
   * Returns how many deliveries it settled or rescheduled.
   */
  async function runOnce(now = new Date()): Promise<number> {
    const claimed = await store.claimDue(now, 50, 60_000);
    const digests = new Map<string, DeliveryRow[]>();
    const work: Promise<void>[] = [];
    for (const d of claimed) {
      if (d.digest && d.channel === "email") {
        const rows = digests.get(d.user_id);
        if (rows) rows.push(d);
        else digests.set(d.user_id, [d]);
        continue;
      }
      work.push(
        (async () => {
          let o: Outcome;
          try {
            o = d.channel === "email" ? await email(d) : await push(d);
          } catch (err) {
            o = { kind: err instanceof Permanent ? "failed" : "retry", response: (err as Error).message };
          }
          await record(d, o);
        })(),
      );
    }
    for (const rows of digests.values())
      work.push(
        (async () => {
          const o = await digest(rows).catch((err: Error) => ({ kind: "retry" as const, response: err.message }));
          for (const d of rows) await record(d, o);
        })(),
      );
    const settled = await Promise.allSettled(work);
    for (const s of settled)
      if (s.status === "rejected") log.warn("recording a delivery failed", { error: String(s.reason) });
    return claimed.length;
  }

  return { runOnce };
}
