import { randomBytes, randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { IdentityService, JwkSchema, TokensSchema, type Tokens } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { invalidArgument, resourceExhausted } from "../../platform/grpc/errors.js";
import { logger } from "../../platform/telemetry/logger.js";
import { callerOf } from "../../platform/grpc/caller.js";
import { sessionOf, userOf } from "./caller.js";
import type { SigningKeyRing } from "./keys.js";
import {
  kindFromName,
  kindName,
  roleName,
  toApiKey,
  toAuditEvent,
  toSession,
  toUser,
  type HumanRole,
} from "./model.js";
import {
  DEFAULT_PARAMS,
  decoyHash,
  hashPassword,
  needsRehash,
  verifyPassword,
  type ScryptParams,
} from "./passwords.js";
import type { AuditEntry, IdentityStore, OneTimePurpose, UserRow } from "./store.js";
import { ACCESS_TOKEN_TTL_SECONDS, hashToken, newAccessClaims, newOpaqueToken, signAccessToken } from "./tokens.js";
import { base32Encode, matchTotp, newTotpSecret, otpauthUri } from "./totp.js";
import { isUniqueViolation } from "../../platform/db/errors.js";

const log = logger.child({ component: "identity" });

export interface Delivery {
  purpose: "email_verification" | "password_reset";
  userId: string;
  email: string;
  /** The raw single-use token; the database keeps only its hash. */
  token: string;
  expiresAt: Date;
}

/** Sends a one-time link to its owner. Mail is out of scope: the default delivers nothing. */
export type Deliver = (d: Delivery) => void | Promise<void>;

export interface IdentityOptions {
  store: IdentityStore;
  keys: SigningKeyRing;
  now?: () => Date;
  deliver?: Deliver;
  /** The account registered with this address becomes admin while no admin exists. */
  bootstrapAdminEmail?: string;
  scrypt?: ScryptParams;
  sessionTtlMs?: number;
}

export const API_KEY_PREFIX = "mmk_";
const MFA_CHALLENGE_MS = 5 * 60_000;
const EMAIL_VERIFICATION_MS = 24 * 3600_000;
const PASSWORD_RESET_MS = 30 * 60_000;
const BACKUP_CODES = 10;

const badLogin = () => new ConnectError("the login or password is wrong", Code.Unauthenticated);
const badRefresh = () => new ConnectError("the refresh token is not valid; sign in again", Code.Unauthenticated);
const badLink = (field: string) =>
  invalidArgument([{ field, description: "is not valid: it is unknown, already used or expired" }]);

function lockedOut(until: Date, now: Date): ConnectError {
  const ms = Math.max(1000, until.getTime() - now.getTime());
  return resourceExhausted(`too many failed sign-ins; try again in ${Math.ceil(ms / 1000)} seconds`, ms);
}

/** 16 base32 characters (80 bits) in groups of four: typed by hand, hashed like a token. */
function newBackupCode(): string {
  return base32Encode(randomBytes(10)).toLowerCase().match(/.{4}/g)!.join("-");
}

const normaliseBackupCode = (code: string) => code.replace(/-/g, "").toLowerCase();

export function identityService(opts: IdentityOptions): ServiceImpl<typeof IdentityService> {
  const { store, keys } = opts;
  const now = opts.now ?? (() => new Date());
  const deliver = opts.deliver ?? (() => undefined);
  const scrypt = opts.scrypt ?? DEFAULT_PARAMS;
  const sessionTtlMs = opts.sessionTtlMs ?? 30 * 24 * 3600_000;
  const decoy = decoyHash(scrypt);

  const audit = (e: AuditEntry, at = now()) => store.audit(e, at);

  async function accessToken(who: Parameters<typeof newAccessClaims>[0]): Promise<string> {
    return signAccessToken(newAccessClaims(who, now()), await keys.signingKey());
  }

  async function startSession(user: UserRow): Promise<Tokens> {
    const at = now();
    const sessionId = randomUUID();
    const refresh = newOpaqueToken();
    await store.insertSession(
      {
        id: sessionId,
        user_id: user.id,
        created_at: at,
        last_used_at: at,
        expires_at: new Date(at.getTime() + sessionTtlMs),
      },
      hashToken(refresh),
    );
    return create(TokensSchema, {
      accessToken: await accessToken({ sub: user.id, role: user.role, kind: "user", sid: sessionId }),
      tokenType: "Bearer",
      expiresInSeconds: ACCESS_TOKEN_TTL_SECONDS,
      refreshToken: refresh,
      sessionId,
    });
  }

  /** Counts a failed credential and answers what the caller should hear. */
  async function failedCredential(user: UserRow, event: string, err: ConnectError): Promise<ConnectError> {
    const at = now();
    const { locked_until, justLocked } = await store.recordLoginFailure(user.id, at);
    await audit({ event, userId: user.id }, at);
    if (justLocked && locked_until) {
      await audit(
        { event: "account_locked", userId: user.id, details: { until: new Date(locked_until).toISOString() } },
        at,
      );
      return lockedOut(new Date(locked_until), at);
    }
    return err;
  }

  function refuseIfLocked(user: UserRow): void {
    const at = now();
    if (user.locked_until && new Date(user.locked_until) > at) throw lockedOut(new Date(user.locked_until), at);
  }

  async function mfaEnabled(userId: string): Promise<boolean> {
    return Boolean((await store.mfa(userId))?.confirmed_at);
  }

  async function oneTimeLink(user: UserRow, purpose: Delivery["purpose"], ttlMs: number): Promise<void> {
    const at = now();
    const token = newOpaqueToken();
    const expiresAt = new Date(at.getTime() + ttlMs);
    await store.insertOneTimeToken({
      token_hash: hashToken(token),
      user_id: user.id,
      purpose,
      created_at: at,
      expires_at: expiresAt,
    });
    await deliver({ purpose, userId: user.id, email: user.email, token, expiresAt });
  }

  const impl: ServiceImpl<typeof IdentityService> = {
    async register(req) {
      const email = req.email.trim();
      const username = req.username;
      const taken = [];
      if (await store.userByEmail(email))
        taken.push({ field: "email", description: "an account with this email address already exists" });
      if (await store.userByUsername(username))
        taken.push({ field: "username", description: "this username is taken" });
      if (taken.length)
        throw new ConnectError(taken.map((t) => `${t.field}: ${t.description}`).join("; "), Code.AlreadyExists);
      const bootstrap =
        opts.bootstrapAdminEmail !== undefined &&
        email.toLowerCase() === opts.bootstrapAdminEmail.trim().toLowerCase() &&
        (await store.adminCount()) === 0;
      const role: HumanRole = bootstrap ? "admin" : "student";
      const at = now();
      let user: UserRow;
      try {
        user = await store.insertUser({
          id: randomUUID(),
          email,
          username,
          password_hash: await hashPassword(req.password, scrypt),
          first_name: req.firstName.trim(),
          last_name: req.lastName.trim(),
          role,
          created_at: at,
          updated_at: at,
        });
      } catch (err) {
        // Two registrations racing for one address or name: the unique index decides.
        if (isUniqueViolation(err))
          throw new ConnectError("an account with this email address or username already exists", Code.AlreadyExists);
        throw err;
      }
      await audit(
        { event: "registered", userId: user.id, details: bootstrap ? { role, bootstrap: "true" } : { role } },
        at,
      );
      return { user: toUser(user, false) };
    },

    async login(req) {
      const user = await store.userByLogin(req.login.trim());
      if (!user) {
        // Spend the same effort as for a real account, then say the same thing.
        await verifyPassword(req.password, await decoy);
        await audit({ event: "login_failed", details: { reason: "unknown_account" } });
        throw badLogin();
      }
      refuseIfLocked(user);
      if (!(await verifyPassword(req.password, user.password_hash))) {
        throw await failedCredential(user, "login_failed", badLogin());
      }
      if (!user.active) throw new ConnectError("this account is disabled", Code.PermissionDenied);
      await store.clearLoginFailures(user.id);
      if (needsRehash(user.password_hash, scrypt))
        await store.setPassword(user.id, await hashPassword(req.password, scrypt), now());
      if (await mfaEnabled(user.id)) {
        const at = now();
        const challenge = newOpaqueToken();
        const expiresAt = new Date(at.getTime() + MFA_CHALLENGE_MS);
        await store.insertOneTimeToken({
          token_hash: hashToken(challenge),
          user_id: user.id,
          purpose: "mfa_login",
          created_at: at,
          expires_at: expiresAt,
        });
        await audit({ event: "login_mfa_required", userId: user.id }, at);
        return {
          result: { case: "mfaChallenge", value: { challengeId: challenge, expireTime: timestampFromDate(expiresAt) } },
        };
      }
      const tokens = await startSession(user);
      await audit({ event: "login_succeeded", userId: user.id, details: { session_id: tokens.sessionId } });
      return { result: { case: "tokens", value: tokens } };
    },

    async verifyMfa(req) {
      const challengeHash = hashToken(req.challengeId);
      const expired = () =>
        new ConnectError("the sign-in challenge is unknown, used or expired; sign in again", Code.Unauthenticated);
      const pending = await store.peekOneTimeToken(challengeHash, "mfa_login", now());
      if (!pending) throw expired();
      const user = await store.userById(pending.user_id);
      const mfa = await store.mfa(pending.user_id);
      if (!user || !mfa?.confirmed_at) throw expired();
      refuseIfLocked(user);
      let method: "totp" | "backup_code" | undefined;
      if (/^\d{6}$/.test(req.code)) {
        const step = matchTotp(mfa.secret, req.code, now(), Number(mfa.last_used_step));
        if (step !== undefined && (await store.useTotpStep(user.id, step))) method = "totp";
      } else if (await store.useBackupCode(user.id, hashToken(normaliseBackupCode(req.code)), now())) {
        method = "backup_code";
      }
      if (!method)
        throw await failedCredential(
          user,
          "mfa_failed",
          new ConnectError("the code is not valid", Code.Unauthenticated),
        );
      // Only one caller can turn a challenge into a session.
      if (!(await store.consumeOneTimeToken(challengeHash, "mfa_login", now()))) throw expired();
      if (!user.active) throw new ConnectError("this account is disabled", Code.PermissionDenied);
      await store.clearLoginFailures(user.id);
      const tokens = await startSession(user);
      await audit({ event: "mfa_used", userId: user.id, details: { method } });
      await audit({
        event: "login_succeeded",
        userId: user.id,
        details: { session_id: tokens.sessionId, mfa: method },
      });
      return { tokens };
    },

    async enrollMfa(_req, ctx) {
      const userId = userOf(ctx);
      const user = await store.userById(userId);
      if (!user) throw new ConnectError("this account no longer exists", Code.Unauthenticated);
      if (await mfaEnabled(userId))
        throw new ConnectError("MFA is already on for this account", Code.FailedPrecondition);
      const secret = newTotpSecret();
      await store.startMfaEnrolment(userId, secret, now());
      return { secret, otpauthUri: otpauthUri(secret, user.email) };
    },

    async confirmMfa(req, ctx) {
      const userId = userOf(ctx);
      const mfa = await store.mfa(userId);
      if (!mfa) throw new ConnectError("start with EnrollMfa", Code.FailedPrecondition);
      if (mfa.confirmed_at) throw new ConnectError("MFA is already on for this account", Code.FailedPrecondition);
      const step = matchTotp(mfa.secret, req.code, now());
      if (step === undefined)
        throw invalidArgument([
          { field: "code", description: "does not match; check the authenticator app and its clock" },
        ]);
      const codes = Array.from({ length: BACKUP_CODES }, newBackupCode);
      if (
        !(await store.confirmMfa(
          userId,
          step,
          codes.map((c) => hashToken(normaliseBackupCode(c))),
          now(),
        ))
      ) {
        throw new ConnectError("MFA is already on for this account", Code.FailedPrecondition);
      }
      await audit({ event: "mfa_enrolled", userId, actor: userId });
      return { backupCodes: codes };
    },

    async refresh(req) {
      const oldHash = hashToken(req.refreshToken);
      const found = await store.refreshToken(oldHash);
      const at = now();
      if (!found) throw badRefresh();
      if (found.rotated_at) {
        // A traded token came back: whoever holds the family may have stolen it. End the session
        // for everyone, the legitimate holder included; they sign in again.
        const revoked = await store.revokeSession(found.session_id, "refresh token reuse", at);
        await audit(
          {
            event: "token_reuse_detected",
            userId: found.user_id,
            details: { session_id: found.session_id, session_revoked: String(revoked) },
          },
          at,
        );
        throw badRefresh();
      }
      if (found.revoked_at || new Date(found.expires_at) <= at) throw badRefresh();
      const user = await store.userById(found.user_id);
      if (!user?.active) throw badRefresh();
      const next = newOpaqueToken();
      if (!(await store.rotateRefreshToken(oldHash, hashToken(next), found.session_id, at))) {
        // Lost a race with another use of the same token: that is reuse too.
        await store.revokeSession(found.session_id, "refresh token reuse", at);
        await audit(
          {
            event: "token_reuse_detected",
            userId: found.user_id,
            details: { session_id: found.session_id, session_revoked: "true" },
          },
          at,
        );
        throw badRefresh();
      }
      await audit({ event: "token_refreshed", userId: user.id, details: { session_id: found.session_id } }, at);
      return {
        tokens: {
          accessToken: await accessToken({ sub: user.id, role: user.role, kind: "user", sid: found.session_id }),
          tokenType: "Bearer",
          expiresInSeconds: ACCESS_TOKEN_TTL_SECONDS,
          refreshToken: next,
          sessionId: found.session_id,
        },
      };
    },

    async logout(_req, ctx) {
      const userId = userOf(ctx);
      const sessionId = sessionOf(ctx);
      if (!sessionId) throw new ConnectError("this access token belongs to no session", Code.FailedPrecondition);
      await store.revokeSession(sessionId, "logout", now(), userId);
      await audit({ event: "logout", userId, actor: userId, details: { session_id: sessionId } });
      return {};
    },

    async listSessions(_req, ctx) {
      const userId = userOf(ctx);
      const current = sessionOf(ctx);
      const rows = await store.openSessions(userId, now());
      return { sessions: rows.map((r) => toSession(r, current)) };
    },

    async revokeSession(req, ctx) {
      const userId = userOf(ctx);
      const s = await store.session(req.sessionId);
      // Someone else's session is answered like a missing one: ids are not a way to probe.
      if (!s || s.user_id !== userId) throw new ConnectError(`session ${req.sessionId} does not exist`, Code.NotFound);
      if (await store.revokeSession(s.id, "revoked by user", now(), userId)) {
        await audit({ event: "session_revoked", userId, actor: userId, details: { session_id: s.id } });
      }
      return {};
    },

    async getMe(_req, ctx) {
      const p = callerOf(ctx);
      const base = { subject: p.subject, role: p.role, kind: kindFromName(p.kind) };
      if (p.kind !== "user") return base;
      const user = await store.userById(p.subject);
      if (!user) throw new ConnectError("this account no longer exists", Code.Unauthenticated);
      return { ...base, user: toUser(user, await mfaEnabled(user.id)) };
    },

    async setRole(req, ctx) {
      const actor = callerOf(ctx).subject;
      const role = roleName(req.role) as HumanRole;
      const updated = await store.transaction(async (tx) => {
        const user = await tx.userById(req.userId);
        if (!user) throw new ConnectError(`user ${req.userId} does not exist`, Code.NotFound);
        if (user.role === "admin" && role !== "admin" && (await tx.adminCount()) <= 1) {
          throw new ConnectError(
            "the last admin cannot give up the admin role; make someone else admin first",
            Code.FailedPrecondition,
          );
        }
        const row = (await tx.setRole(user.id, role, now()))!;
        await tx.audit(
          { event: "role_changed", userId: user.id, actor, details: { from: user.role, to: role } },
          now(),
        );
        return row;
      });
      return { user: toUser(updated, await mfaEnabled(updated.id)) };
    },

    async createApiKey(req, ctx) {
      const actor = callerOf(ctx).subject;
      const key = newOpaqueToken(API_KEY_PREFIX);
      const row = await store.insertApiKey({
        id: randomUUID(),
        name: req.name,
        kind: kindName(req.kind),
        key_hash: hashToken(key),
        prefix: key.slice(0, API_KEY_PREFIX.length + 6),
        created_by: actor,
        created_at: now(),
      });
      await audit({ event: "api_key_created", actor, details: { api_key_id: row.id, name: row.name, kind: row.kind } });
      return { apiKey: toApiKey(row), key };
    },

    async listApiKeys(req) {
      return { apiKeys: (await store.apiKeys(req.includeRevoked)).map(toApiKey) };
    },

    async revokeApiKey(req, ctx) {
      const actor = callerOf(ctx).subject;
      const row = await store.apiKey(req.id);
      if (!row) throw new ConnectError(`API key ${req.id} does not exist`, Code.NotFound);
      if (await store.revokeApiKey(row.id, now())) {
        await audit({
          event: "api_key_revoked",
          actor,
          details: { api_key_id: row.id, name: row.name, kind: row.kind },
        });
      }
      return {};
    },

    async exchangeApiKey(req) {
      const invalid = () => new ConnectError("the API key is not valid", Code.Unauthenticated);
      if (!req.apiKey.startsWith(API_KEY_PREFIX)) throw invalid();
      const row = await store.useApiKey(hashToken(req.apiKey), now());
      if (!row) throw invalid();
      return {
        accessToken: await accessToken({ sub: row.name, role: row.kind, kind: row.kind }),
        tokenType: "Bearer",
        expiresInSeconds: ACCESS_TOKEN_TTL_SECONDS,
      };
    },

    async requestEmailVerification(_req, ctx) {
      const user = await store.userById(userOf(ctx));
      if (!user) throw new ConnectError("this account no longer exists", Code.Unauthenticated);
      if (user.email_verified) throw new ConnectError("the email address is already verified", Code.FailedPrecondition);
      log.info("email verification requested", { user_id: user.id });
      await oneTimeLink(user, "email_verification", EMAIL_VERIFICATION_MS);
      return {};
    },

    async verifyEmail(req) {
      const userId = await store.consumeOneTimeToken(hashToken(req.token), "email_verification", now());
      if (!userId) throw badLink("token");
      await store.markEmailVerified(userId, now());
      await audit({ event: "email_verified", userId });
      return {};
    },

    async requestPasswordReset(req) {
      const user = await store.userByEmail(req.email.trim());
      if (user?.active) {
        log.info("password reset requested", { user_id: user.id });
        await oneTimeLink(user, "password_reset", PASSWORD_RESET_MS);
        await audit({ event: "password_reset_requested", userId: user.id });
      }
      return {};
    },

    async resetPassword(req) {
      const hash = await hashPassword(req.newPassword, scrypt);
      const purpose: OneTimePurpose = "password_reset";
      const userId = await store.transaction(async (tx) => {
        const at = now();
        const id = await tx.consumeOneTimeToken(hashToken(req.token), purpose, at);
        if (!id) return undefined;
        await tx.setPassword(id, hash, at);
        await tx.clearLoginFailures(id);
        await tx.consumeAllOneTimeTokens(id, purpose, at);
        await tx.revokeAllSessions(id, "password reset", at);
        await tx.audit({ event: "password_reset", userId: id }, at);
        return id;
      });
      if (!userId) throw badLink("token");
      return {};
    },

    async getJwks() {
      const jwks = await keys.jwks();
      return { jwksJson: JSON.stringify(jwks), keys: jwks.keys.map((k) => create(JwkSchema, k)) };
    },

    async rotateSigningKey(_req, ctx) {
      const kid = await keys.rotate();
      await audit({ event: "signing_key_rotated", actor: callerOf(ctx).subject, details: { kid } });
      return { kid };
    },

    async listAuditEvents(req) {
      const rows = await store.auditEvents(
        req.pageSize || 50,
        req.userId || undefined,
        req.beforeId ? Number(req.beforeId) : undefined,
      );
      return { events: rows.map(toAuditEvent) };
    },
  };

  return impl;
}
