import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import type { Agent } from "node:https";
import path from "node:path";
import webpush from "web-push";
import type { PushSubscriptionRow } from "./tables.js";

export interface VapidKeys {
  publicKey: string;
  privateKey: string;
}

/**
 * The VAPID key pair: from the environment when both halves are set, else the one kept under the
 * data dir, made at the first start (browsers tie a subscription to the public key, so it must
 * survive restarts). "memory://" data (tests) gets a fresh pair per start.
 */
export function vapidKeys(env: { publicKey?: string; privateKey?: string }, dataDir: string): VapidKeys {
  if (env.publicKey && env.privateKey) return { publicKey: env.publicKey, privateKey: env.privateKey };
  if (env.publicKey || env.privateKey) throw new Error("set both VAPID_PUBLIC_KEY and VAPID_PRIVATE_KEY, or neither");
  if (dataDir === "memory://") return webpush.generateVAPIDKeys();
  const file = path.join(dataDir, "notifications", "vapid.json");
  try {
    return JSON.parse(readFileSync(file, "utf8")) as VapidKeys;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  const keys = webpush.generateVAPIDKeys();
  mkdirSync(path.dirname(file), { recursive: true });
  // The private key signs every push: readable by this user only.
  writeFileSync(file, JSON.stringify(keys), { mode: 0o600, flag: "wx" });
  return keys;
}

export type PushOutcome =
  | { kind: "sent"; response: string }
  | { kind: "gone"; response: string }
  | { kind: "retry"; response: string }
  | { kind: "failed"; response: string };

export interface PushSender {
  publicKey: string;
  send(sub: PushSubscriptionRow, payload: string): Promise<PushOutcome>;
}

/**
 * `agent` is for tests, whose push service has a certificate of their own making: an agent that
 * trusts exactly that certificate, never one that turns verification off.
 */
export function pushSender(keys: VapidKeys, subject: string, agent?: Agent, timeoutMs = 10_000): PushSender {
  return {
    publicKey: keys.publicKey,
    async send(sub, payload) {
      try {
        const r = await webpush.sendNotification(
          { endpoint: sub.endpoint, keys: { p256dh: sub.p256dh, auth: sub.auth } },
          payload,
          {
            vapidDetails: { subject, ...keys },
            TTL: 24 * 3600,
            timeout: timeoutMs,
            contentEncoding: "aes128gcm",
            ...(agent ? { agent } : {}),
          },
        );
        return { kind: "sent", response: `${r.statusCode}` };
      } catch (err) {
        const status = (err as { statusCode?: number }).statusCode;
        const response = status
          ? `${status} ${String((err as { body?: string }).body ?? "").slice(0, 200)}`.trim()
          : (err as Error).message;
        // 404/410: the browser dropped the subscription. 429 and 5xx pass; other 4xx never will.
        if (status === 404 || status === 410) return { kind: "gone", response };
        if (status === undefined || status === 429 || status >= 500) return { kind: "retry", response };
        return { kind: "failed", response };
      }
    },
  };
}
