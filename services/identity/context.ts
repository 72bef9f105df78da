import type { OutboxEvent } from "../../platform/events/index.js";
import type { SigningKeyRing } from "./keys.js";
import { DEFAULT_PARAMS, type ScryptParams } from "./passwords.js";
import type { AuditEntry, IdentityStore } from "./store.js";

export interface Delivery {
  purpose: "email_verification" | "password_reset";
  userId: string;
  email: string;
  /** The raw single-use token; the database keeps only its hash. */
  token: string;
  expiresAt: Date;
}

/**
 * Hands a one-time link with its raw token to code in the same process (tests). The mesh's way is
 * user.events plus IssueAccountLink, which the notifications service uses; see README.
 */
export type Deliver = (d: Delivery) => void | Promise<void>;

export interface IdentityOptions {
  store: IdentityStore;
  keys: SigningKeyRing;
  now?: () => Date;
  deliver?: Deliver;
  /** Called after a write that may have queued user.events, so the relay publishes at once. */
  afterWrite?: () => void;
  /** The account registered with this address becomes admin while no admin exists. */
  bootstrapAdminEmail?: string;
  scrypt?: ScryptParams;
  sessionTtlMs?: number;
}

/**
 * What every group of handlers works with, settled once per service: the options with their
 * defaults filled in, and an audit writer on the service's clock, so expiry checks and the rows
 * they compare against share one time source.
 */
export interface IdentityContext {
  store: IdentityStore;
  keys: SigningKeyRing;
  now: () => Date;
  deliver: Deliver;
  bootstrapAdminEmail: string | undefined;
  scrypt: ScryptParams;
  sessionTtlMs: number;
  audit(e: AuditEntry, at?: Date, event?: OutboxEvent): Promise<void>;
}

const DEFAULT_SESSION_TTL_MS = 30 * 24 * 3600_000;

export function identityContext(opts: IdentityOptions): IdentityContext {
  const now = opts.now ?? (() => new Date());
  return {
    store: opts.store,
    keys: opts.keys,
    now,
    deliver: opts.deliver ?? (() => undefined),
    bootstrapAdminEmail: opts.bootstrapAdminEmail,
    scrypt: opts.scrypt ?? DEFAULT_PARAMS,
    sessionTtlMs: opts.sessionTtlMs ?? DEFAULT_SESSION_TTL_MS,
    audit: async (e, at = now(), event) => {
      await opts.store.audit(e, at, event);
      if (event) opts.afterWrite?.();
    },
  };
}
