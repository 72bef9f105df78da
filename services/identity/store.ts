import type { ExpressionBuilder, Kysely, UpdateResult } from "kysely";
import { sql } from "kysely";
import { enqueue, type OutboxEvent } from "../../platform/events/index.js";
import type {
  ApiKeyRow,
  AuditRow,
  HumanRole,
  IdentityDB,
  MfaRow,
  OneTimePurpose,
  OneTimeTokenRow,
  SessionRow,
  SigningKeyRow,
  UserRow,
} from "./tables.js";

export interface AuditEntry {
  event: string;
  userId?: string | null;
  actor?: string | null;
  details?: Record<string, string>;
}

/** Failed sign-ins before a lock; each lock of a streak lasts twice the last, up to the cap. */
export const LOCKOUT_THRESHOLD = 5;
export const LOCKOUT_BASE_SECONDS = 60;
export const LOCKOUT_MAX_SECONDS = 3600;

const changed = (res: UpdateResult) => Number(res.numUpdatedRows);

/** A one-time token that still counts: unused, unexpired, issued for this purpose. */
const liveOneTimeToken =
  (hash: string, purpose: OneTimePurpose, now: Date) => (eb: ExpressionBuilder<IdentityDB, "one_time_tokens">) =>
    eb.and([
      eb("token_hash", "=", hash),
      eb("purpose", "=", purpose),
      eb("used_at", "is", null),
      eb("expires_at", ">", now),
    ]);

/** Every query of the identity service; the schema is already scoped by openDatabase. */
export class IdentityStore {
  constructor(readonly db: Kysely<IdentityDB>) {}

  transaction<T>(fn: (store: IdentityStore) => Promise<T>): Promise<T> {
    return this.db.transaction().execute((trx) => fn(new IdentityStore(trx)));
  }

  // ---- users

  async insertUser(
    u: Omit<UserRow, "active" | "email_verified" | "failed_logins" | "lockouts" | "locked_until">,
  ): Promise<UserRow> {
    return this.db.insertInto("users").values(u).returningAll().executeTakeFirstOrThrow();
  }

  async userById(id: string): Promise<UserRow | undefined> {
    return this.db.selectFrom("users").selectAll().where("id", "=", id).executeTakeFirst();
  }

  async userByEmail(email: string): Promise<UserRow | undefined> {
    return this.userIgnoringCase("email", email);
  }

  async userByUsername(username: string): Promise<UserRow | undefined> {
    return this.userIgnoringCase("username", username);
  }

  // Matches the unique indexes on lower(email) and lower(username), so the lookup can use them.
  private async userIgnoringCase(column: "email" | "username", value: string): Promise<UserRow | undefined> {
    return this.db
      .selectFrom("users")
      .selectAll()
      .where(sql`lower(${sql.ref(column)})`, "=", value.toLowerCase())
      .executeTakeFirst();
  }

  /** By email address or username, whichever the text is. */
  async userByLogin(login: string): Promise<UserRow | undefined> {
    return login.includes("@") ? this.userByEmail(login) : this.userByUsername(login);
  }

  async adminCount(): Promise<number> {
    const r = await this.db
      .selectFrom("users")
      .select((eb) => eb.fn.countAll<number>().as("n"))
      .where("role", "=", "admin")
      .where("active", "=", true)
      .executeTakeFirstOrThrow();
    return Number(r.n);
  }

  async setRole(id: string, role: HumanRole, now: Date): Promise<UserRow | undefined> {
    return this.db
      .updateTable("users")
      .set({ role, updated_at: now })
      .where("id", "=", id)
      .returningAll()
      .executeTakeFirst();
  }

  async setPassword(id: string, hash: string, now: Date): Promise<void> {
    await this.db.updateTable("users").set({ password_hash: hash, updated_at: now }).where("id", "=", id).execute();
  }

  async markEmailVerified(id: string, now: Date): Promise<void> {
    await this.db.updateTable("users").set({ email_verified: true, updated_at: now }).where("id", "=", id).execute();
  }

  /**
   * Counts a failed sign-in in one statement, so concurrent guesses cannot slip past the count.
   * Every LOCKOUT_THRESHOLD-th failure locks the account; locks double while failures continue.
   */
  async recordLoginFailure(id: string, now: Date): Promise<{ locked_until: Date | null; justLocked: boolean }> {
    const hit = sql<boolean>`failed_logins + 1 >= ${LOCKOUT_THRESHOLD}`;
    const row = await this.db
      .updateTable("users")
      .set({
        failed_logins: sql`case when ${hit} then 0 else failed_logins + 1 end`,
        lockouts: sql`case when ${hit} then lockouts + 1 else lockouts end`,
        locked_until: sql`case when ${hit}
          then ${now}::timestamptz + make_interval(secs => least(${LOCKOUT_BASE_SECONDS} * power(2, least(lockouts, 16)), ${LOCKOUT_MAX_SECONDS}))
          else locked_until end`,
      })
      .where("id", "=", id)
      .returning([
        "locked_until",
        sql<boolean>`failed_logins = 0 and locked_until > ${now}::timestamptz`.as("just_locked"),
      ])
      .executeTakeFirst();
    return { locked_until: row?.locked_until ?? null, justLocked: Boolean(row?.just_locked) };
  }

  async clearLoginFailures(id: string): Promise<void> {
    await this.db
      .updateTable("users")
      .set({ failed_logins: 0, lockouts: 0, locked_until: null })
      .where("id", "=", id)
      .execute();
  }

  // ---- sessions and refresh tokens

  async insertSession(s: Omit<SessionRow, "revoked_at" | "revoke_reason">, refreshHash: string): Promise<void> {
    await this.db.transaction().execute(async (tx) => {
      await tx.insertInto("sessions").values(s).execute();
      await tx
        .insertInto("refresh_tokens")
        .values({ token_hash: refreshHash, session_id: s.id, created_at: s.created_at })
        .execute();
    });
  }

  async refreshToken(hash: string) {
    return this.db
      .selectFrom("refresh_tokens as t")
      .innerJoin("sessions as s", "s.id", "t.session_id")
      .select(["t.token_hash", "t.rotated_at", "s.id as session_id", "s.user_id", "s.expires_at", "s.revoked_at"])
      .where("t.token_hash", "=", hash)
      .executeTakeFirst();
  }

  /** Marks a refresh token traded; false when someone traded it first (then it is reuse). */
  async rotateRefreshToken(oldHash: string, newHash: string, sessionId: string, now: Date): Promise<boolean> {
    // One transaction: a token is never marked traded without its successor existing.
    return this.db.transaction().execute(async (tx) => {
      const res = await tx
        .updateTable("refresh_tokens")
        .set({ rotated_at: now })
        .where("token_hash", "=", oldHash)
        .where("rotated_at", "is", null)
        .executeTakeFirst();
      if (changed(res) !== 1) return false;
      await tx
        .insertInto("refresh_tokens")
        .values({ token_hash: newHash, session_id: sessionId, created_at: now })
        .execute();
      await tx.updateTable("sessions").set({ last_used_at: now }).where("id", "=", sessionId).execute();
      return true;
    });
  }

  async revokeSession(id: string, reason: string, now: Date, userId?: string): Promise<boolean> {
    let q = this.revokingSessions(reason, now).where("id", "=", id);
    if (userId) q = q.where("user_id", "=", userId);
    return changed(await q.executeTakeFirst()) > 0;
  }

  async revokeAllSessions(userId: string, reason: string, now: Date): Promise<void> {
    await this.revokingSessions(reason, now).where("user_id", "=", userId).execute();
  }

  // Only open sessions: a revocation's time and reason are the first ones, never overwritten.
  private revokingSessions(reason: string, now: Date) {
    return this.db
      .updateTable("sessions")
      .set({ revoked_at: now, revoke_reason: reason })
      .where("revoked_at", "is", null);
  }

  async session(id: string): Promise<SessionRow | undefined> {
    return this.db.selectFrom("sessions").selectAll().where("id", "=", id).executeTakeFirst();
  }

  async openSessions(userId: string, now: Date): Promise<SessionRow[]> {
    return this.db
      .selectFrom("sessions")
      .selectAll()
      .where("user_id", "=", userId)
      .where("revoked_at", "is", null)
      .where("expires_at", ">", now)
      .orderBy("created_at", "desc")
      .orderBy("id")
      .execute();
  }

  // ---- MFA

  async mfa(userId: string): Promise<MfaRow | undefined> {
    return this.db.selectFrom("mfa").selectAll().where("user_id", "=", userId).executeTakeFirst();
  }

  async startMfaEnrolment(userId: string, secret: string, now: Date): Promise<void> {
    await this.db
      .insertInto("mfa")
      .values({ user_id: userId, secret, created_at: now })
      .onConflict((oc) =>
        oc
          .column("user_id")
          .doUpdateSet({ secret, created_at: now, confirmed_at: null, last_used_step: -1 })
          .where("mfa.confirmed_at", "is", null),
      )
      .execute();
  }

  async confirmMfa(userId: string, step: number, backupHashes: string[], now: Date): Promise<boolean> {
    return this.transaction((tx) => tx.confirmMfaIn(userId, step, backupHashes, now));
  }

  private async confirmMfaIn(userId: string, step: number, backupHashes: string[], now: Date): Promise<boolean> {
    const res = await this.db
      .updateTable("mfa")
      .set({ confirmed_at: now, last_used_step: step })
      .where("user_id", "=", userId)
      .where("confirmed_at", "is", null)
      .executeTakeFirst();
    if (changed(res) !== 1) return false;
    await this.db.deleteFrom("mfa_backup_codes").where("user_id", "=", userId).execute();
    await this.db
      .insertInto("mfa_backup_codes")
      .values(backupHashes.map((code_hash) => ({ user_id: userId, code_hash })))
      .execute();
    return true;
  }

  /** Accepts a TOTP step only if it is newer than every step accepted before: no replay. */
  async useTotpStep(userId: string, step: number): Promise<boolean> {
    const res = await this.db
      .updateTable("mfa")
      .set({ last_used_step: step })
      .where("user_id", "=", userId)
      .where("last_used_step", "<", step)
      .executeTakeFirst();
    return changed(res) === 1;
  }

  async useBackupCode(userId: string, codeHash: string, now: Date): Promise<boolean> {
    const res = await this.db
      .updateTable("mfa_backup_codes")
      .set({ used_at: now })
      .where("user_id", "=", userId)
      .where("code_hash", "=", codeHash)
      .where("used_at", "is", null)
      .executeTakeFirst();
    return changed(res) === 1;
  }

  // ---- one-time tokens

  /**
   * A fresh token for a pending link: the previous one stops working. Nothing for a link that
   * was used, expired or is of a purpose that is not sent by mail.
   */
  async reissueOneTimeToken(
    id: string,
    newHash: string,
    now: Date,
  ): Promise<Pick<OneTimeTokenRow, "user_id" | "purpose" | "expires_at"> | undefined> {
    return this.db
      .updateTable("one_time_tokens")
      .set({ token_hash: newHash })
      .where("id", "=", id)
      .where("purpose", "in", ["email_verification", "password_reset"])
      .where("used_at", "is", null)
      .where("expires_at", ">", now)
      .returning(["user_id", "purpose", "expires_at"])
      .executeTakeFirst();
  }

  async insertOneTimeToken(t: Omit<OneTimeTokenRow, "used_at" | "id">): Promise<string> {
    return (await this.db.insertInto("one_time_tokens").values(t).returning("id").executeTakeFirstOrThrow()).id;
  }

  async peekOneTimeToken(hash: string, purpose: OneTimePurpose, now: Date): Promise<{ user_id: string } | undefined> {
    return this.db
      .selectFrom("one_time_tokens")
      .select("user_id")
      .where(liveOneTimeToken(hash, purpose, now))
      .executeTakeFirst();
  }

  /** Uses a token up; answers its user only for the one caller that got it while valid. */
  async consumeOneTimeToken(hash: string, purpose: OneTimePurpose, now: Date): Promise<string | undefined> {
    const row = await this.db
      .updateTable("one_time_tokens")
      .set({ used_at: now })
      .where(liveOneTimeToken(hash, purpose, now))
      .returning("user_id")
      .executeTakeFirst();
    return row?.user_id;
  }

  async consumeAllOneTimeTokens(userId: string, purpose: OneTimePurpose, now: Date): Promise<void> {
    await this.db
      .updateTable("one_time_tokens")
      .set({ used_at: now })
      .where("user_id", "=", userId)
      .where("purpose", "=", purpose)
      .where("used_at", "is", null)
      .execute();
  }

  // ---- API keys

  async insertApiKey(k: Omit<ApiKeyRow, "last_used_at" | "revoked_at">): Promise<ApiKeyRow> {
    return this.db.insertInto("api_keys").values(k).returningAll().executeTakeFirstOrThrow();
  }

  async apiKeys(includeRevoked: boolean): Promise<ApiKeyRow[]> {
    let q = this.db.selectFrom("api_keys").selectAll();
    if (!includeRevoked) q = q.where("revoked_at", "is", null);
    return q.orderBy("created_at", "desc").orderBy("id").execute();
  }

  async apiKey(id: string): Promise<ApiKeyRow | undefined> {
    return this.db.selectFrom("api_keys").selectAll().where("id", "=", id).executeTakeFirst();
  }

  async revokeApiKey(id: string, now: Date): Promise<boolean> {
    return changed(await this.revokingApiKeys(now).where("id", "=", id).executeTakeFirst()) > 0;
  }

  /** The key with this hash, live or revoked. */
  async apiKeyByHash(hash: string): Promise<ApiKeyRow | undefined> {
    return this.db.selectFrom("api_keys").selectAll().where("key_hash", "=", hash).executeTakeFirst();
  }

  /** Revokes the live keys of `name` that `createdBy` made, except `keepId`; answers how many. */
  async revokeConfiguredApiKeys(name: string, createdBy: string, keepId: string, now: Date): Promise<number> {
    const res = await this.revokingApiKeys(now)
      .where("name", "=", name)
      .where("created_by", "=", createdBy)
      .where("id", "!=", keepId)
      .executeTakeFirst();
    return changed(res);
  }

  /** Revokes every live key of `name` (a device's keys); answers how many. */
  async revokeApiKeysNamed(name: string, now: Date): Promise<number> {
    return changed(await this.revokingApiKeys(now).where("name", "=", name).executeTakeFirst());
  }

  // Only live keys, so a key's revocation time stays the first one.
  private revokingApiKeys(now: Date) {
    return this.db.updateTable("api_keys").set({ revoked_at: now }).where("revoked_at", "is", null);
  }

  /** The live key with this hash, marked used now. */
  async useApiKey(hash: string, now: Date): Promise<ApiKeyRow | undefined> {
    return this.db
      .updateTable("api_keys")
      .set({ last_used_at: now })
      .where("key_hash", "=", hash)
      .where("revoked_at", "is", null)
      .returningAll()
      .executeTakeFirst();
  }

  // ---- signing keys

  async signingKeys(publishedSince: Date): Promise<SigningKeyRow[]> {
    return this.db
      .selectFrom("signing_keys")
      .selectAll()
      .where((eb) => eb.or([eb("retired_at", "is", null), eb("retired_at", ">", publishedSince)]))
      .orderBy("created_at", "desc")
      .orderBy("kid")
      .execute();
  }

  /** The new key takes over: every other live key retires now; long-retired ones are deleted. */
  async addSigningKey(k: Omit<SigningKeyRow, "retired_at">, forgetRetiredBefore: Date): Promise<void> {
    await this.transaction(async (tx) => {
      await tx.db
        .updateTable("signing_keys")
        .set({ retired_at: k.created_at })
        .where("retired_at", "is", null)
        .execute();
      await tx.db
        .insertInto("signing_keys")
        .values({ ...k, public_jwk: JSON.stringify(k.public_jwk) })
        .execute();
      await tx.db.deleteFrom("signing_keys").where("retired_at", "<", forgetRetiredBefore).execute();
    });
  }

  // ---- audit

  /**
   * Records a security event and, when given, the user.events event announcing it, in one
   * transaction: the event is published if and only if the fact was recorded.
   */
  async audit(e: AuditEntry, now: Date, event?: OutboxEvent): Promise<void> {
    if (event && !this.db.isTransaction) return this.transaction((tx) => tx.audit(e, now, event));
    if (event) await enqueue(this.db, event);
    await this.db
      .insertInto("audit_log")
      .values({
        at: now,
        event: e.event,
        user_id: e.userId ?? null,
        actor: e.actor ?? null,
        details: JSON.stringify(e.details ?? {}) as never,
      })
      .execute();
  }

  async usersAfter(afterId: string | undefined, limit: number): Promise<UserRow[]> {
    let q = this.db.selectFrom("users").selectAll();
    if (afterId) q = q.where("id", ">", afterId);
    return q.orderBy("id").limit(limit).execute();
  }

  /** Which of these accounts have a confirmed second factor. */
  async withConfirmedMfa(userIds: string[]): Promise<Set<string>> {
    if (userIds.length === 0) return new Set();
    const rows = await this.db
      .selectFrom("mfa")
      .select("user_id")
      .where("user_id", "in", userIds)
      .where("confirmed_at", "is not", null)
      .execute();
    return new Set(rows.map((r) => r.user_id));
  }

  async auditEvents(limit: number, userId?: string, beforeId?: number): Promise<AuditRow[]> {
    let q = this.db.selectFrom("audit_log").selectAll();
    if (userId) q = q.where("user_id", "=", userId);
    if (beforeId) q = q.where("id", "<", beforeId);
    return q.orderBy("id", "desc").limit(limit).execute();
  }
}
