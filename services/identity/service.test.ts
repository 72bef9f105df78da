import { generateKeyPairSync } from "node:crypto";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError } from "@connectrpc/connect";
import { Role } from "../../gen/medmesh/access/v1/access_pb.js";
import { BadRequestSchema, RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { IdentityService, PrincipalKind, type Tokens } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { backends, testEnv } from "../../test/support/backends.js";
import type { SigningKeyRing } from "./keys.js";
import { startIdentity } from "./main.js";
import type { Delivery } from "./context.js";
import { newAccessClaims, signAccessToken, signJws, verifyAccessToken } from "./tokens.js";
import { totp } from "./totp.js";
import { rejection } from "../../test/support/rejection.js";

type Client = ReturnType<typeof createMeshClient<typeof IdentityService>>;

const bearer = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });
const password = "correct horse battery staple";
const ADMIN_EMAIL = "root@medmesh.test";
let counter = 0;
const unique = () => `${Date.now().toString(36)}${(counter++).toString(36)}`;

describe.each(backends())("identity service on $name", (backend) => {
  let stop: () => Promise<void>;
  let client: Client;
  let keys: SigningKeyRing;
  // The service's clock: tests move it to reach expiry, lock ends and TOTP steps without waiting.
  let offsetMs = 0;
  const now = () => new Date(Date.now() + offsetMs);
  const outbox: Delivery[] = [];
  let admin: Tokens;

  async function newUser(
    over: Partial<{ email: string; username: string; firstName: string; lastName: string; password: string }> = {},
  ) {
    const id = unique();
    const req = {
      email: `user-${id}@example.org`,
      username: `user_${id}`,
      password,
      firstName: "Ada",
      lastName: "Byron",
      ...over,
    };
    const { user } = await client.register(req);
    return { ...req, user: user! };
  }

  async function login(loginName: string, pw = password): Promise<Tokens> {
    const res = await client.login({ login: loginName, password: pw });
    if (res.result.case !== "tokens") throw new Error(`expected tokens, got ${res.result.case}`);
    return res.result.value;
  }

  const lastDelivery = (purpose: Delivery["purpose"], userId: string) =>
    [...outbox].reverse().find((d) => d.purpose === purpose && d.userId === userId);

  beforeAll(async () => {
    const svc = await startIdentity(
      {
        ...testEnv,
        ...backend.env,
        IDENTITY_PORT: "0",
        IDENTITY_DB_SCHEMA: `identity_t${backend.env.DOCUMENTS_DB_SCHEMA!.slice(-8)}`,
        IDENTITY_BOOTSTRAP_ADMIN_EMAIL: ADMIN_EMAIL,
        // The lowest cost the service accepts, to keep the suite quick; tokens.test.ts covers the default.
        IDENTITY_SCRYPT_LOG_N: "14",
        IDENTITY_KEY_ROTATION_HOURS: "720",
        // Rate limits have their own tests (gateway and rate-limiter); here they would only
        // stand in front of the rules this suite checks, such as the lockout.
        RATE_LIMITS: "read=100000:100000,write=100000:100000,auth=100000:100000",
      },
      { now, deliver: (d) => void outbox.push(d) },
    );
    stop = svc.stop;
    keys = svc.keys;
    client = createMeshClient(IdentityService, `127.0.0.1:${svc.port}`, { defaultTimeoutMs: 10_000 });
    await client.register({ email: ADMIN_EMAIL, username: "root", password, firstName: "Root", lastName: "Admin" });
    admin = await login("root");
  });
  afterAll(async () => {
    client?.close();
    await stop?.();
  });
  afterEach(() => {
    offsetMs = 0;
  });

  describe("accounts and sessions", () => {
    it("makes the bootstrap address admin and every other registration a student", async () => {
      const me = await client.getMe({}, bearer(admin.accessToken));
      expect(me.user!.role).toBe(Role.ADMIN);
      expect(me.kind).toBe(PrincipalKind.USER);
      const { user } = await newUser();
      expect(user.role).toBe(Role.STUDENT);
      expect(user.emailVerified).toBe(false);
      expect(user.mfaEnabled).toBe(false);
    });

    it("signs in by email or username in any case, and GetMe answers that account", async () => {
      const u = await newUser();
      for (const name of [u.email, u.email.toUpperCase(), u.username.toUpperCase()]) {
        const tokens = await login(name);
        expect(tokens.tokenType).toBe("Bearer");
        expect(tokens.expiresInSeconds).toBe(900);
        const me = await client.getMe({}, bearer(tokens.accessToken));
        expect(me).toMatchObject({
          subject: u.user.id,
          role: Role.STUDENT,
          user: { email: u.email, username: u.username, firstName: "Ada" },
        });
      }
    });

    it("refuses a second account with the same email or username in another case (already_exists)", async () => {
      const u = await newUser();
      const sameEmail = await rejection(
        client.register({
          email: u.email.toUpperCase(),
          username: `other_${unique()}`,
          password,
          firstName: "A",
          lastName: "B",
        }),
      );
      expect(sameEmail.code).toBe(Code.AlreadyExists);
      expect(sameEmail.rawMessage).toMatch(/email address already exists/);
      const sameName = await rejection(
        client.register({
          email: `other-${unique()}@example.org`,
          username: u.username.toUpperCase(),
          password,
          firstName: "A",
          lastName: "B",
        }),
      );
      expect(sameName.code).toBe(Code.AlreadyExists);
      expect(sameName.rawMessage).toMatch(/username is taken/);
    });

    it("rejects bad registrations with a sentence for each field", async () => {
      const err = await rejection(
        client.register({ email: "not-an-address", username: "1x", password: "short", firstName: "  ", lastName: "B" }),
      );
      expect(err.code).toBe(Code.InvalidArgument);
      const v = Object.fromEntries(
        err.findDetails(BadRequestSchema).flatMap((d) => d.fieldViolations.map((f) => [f.field, f.description])),
      );
      expect(v).toMatchObject({
        email: expect.stringMatching(/email/),
        username: expect.stringMatching(/3 to 32 characters/),
        password: "must be 12 to 128 characters long",
        first_name: expect.stringMatching(/not blank/),
      });
      const long = await rejection(
        client.register({
          email: `x-${unique()}@example.org`,
          username: `u_${unique()}`,
          password: "x".repeat(129),
          firstName: "A",
          lastName: "B",
        }),
      );
      expect(long.code).toBe(Code.InvalidArgument);
    });

    it("answers a wrong password and an unknown account with the same unauthenticated sentence", async () => {
      const u = await newUser();
      const wrong = await rejection(client.login({ login: u.username, password: "wrong password!!" }));
      const unknown = await rejection(client.login({ login: `nobody_${unique()}`, password }));
      expect([wrong.code, unknown.code]).toEqual([Code.Unauthenticated, Code.Unauthenticated]);
      expect(wrong.rawMessage).toBe(unknown.rawMessage);
    });

    it("Refresh rotates; the rotated token presented again revokes the whole session and is audited", async () => {
      const u = await newUser();
      const first = await login(u.username);
      const { tokens: second } = await client.refresh({ refreshToken: first.refreshToken });
      expect(second!.sessionId).toBe(first.sessionId);
      expect(second!.refreshToken).not.toBe(first.refreshToken);
      expect((await client.getMe({}, bearer(second!.accessToken))).subject).toBe(u.user.id);

      const reuse = await rejection(client.refresh({ refreshToken: first.refreshToken }));
      expect(reuse.code).toBe(Code.Unauthenticated);
      // The family is gone: even the newest token of that session no longer works.
      expect((await rejection(client.refresh({ refreshToken: second!.refreshToken }))).code).toBe(Code.Unauthenticated);
      const sessions = await client.listSessions({}, bearer(second!.accessToken));
      expect(sessions.sessions.map((s) => s.id)).not.toContain(first.sessionId);
      const { events } = await client.listAuditEvents({ userId: u.user.id }, bearer(admin.accessToken));
      expect(events.find((e) => e.event === "token_reuse_detected")?.details).toMatchObject({
        session_id: first.sessionId,
        session_revoked: "true",
      });
    });

    it("two concurrent refreshes with one token: exactly one wins, and the race ends the session as reuse", async () => {
      const u = await newUser();
      const t = await login(u.username);
      const results = await Promise.allSettled([
        client.refresh({ refreshToken: t.refreshToken }),
        client.refresh({ refreshToken: t.refreshToken }),
      ]);
      const won = results.filter(
        (r): r is PromiseFulfilledResult<Awaited<ReturnType<Client["refresh"]>>> => r.status === "fulfilled",
      );
      expect(won).toHaveLength(1);
      expect((await rejection(client.refresh({ refreshToken: won[0]!.value.tokens!.refreshToken }))).code).toBe(
        Code.Unauthenticated,
      );
    });

    it("Refresh refuses a made-up token", async () => {
      expect((await rejection(client.refresh({ refreshToken: "made-up" }))).code).toBe(Code.Unauthenticated);
    });

    it("Logout ends the caller's session: its refresh token stops working, other sessions stay", async () => {
      const u = await newUser();
      const a = await login(u.username);
      const b = await login(u.username);
      await client.logout({}, bearer(a.accessToken));
      expect((await rejection(client.refresh({ refreshToken: a.refreshToken }))).code).toBe(Code.Unauthenticated);
      expect((await client.refresh({ refreshToken: b.refreshToken })).tokens!.sessionId).toBe(b.sessionId);
    });

    it("ListSessions marks the current one; RevokeSession ends another; someone else's session is not_found", async () => {
      const u = await newUser();
      const a = await login(u.username);
      const b = await login(u.username);
      const { sessions } = await client.listSessions({}, bearer(a.accessToken));
      expect(sessions.map((s) => [s.id, s.current]).sort()).toEqual(
        [
          [a.sessionId, true],
          [b.sessionId, false],
        ].sort(),
      );
      await client.revokeSession({ sessionId: b.sessionId }, bearer(a.accessToken));
      expect((await client.listSessions({}, bearer(a.accessToken))).sessions.map((s) => s.id)).toEqual([a.sessionId]);
      expect((await rejection(client.refresh({ refreshToken: b.refreshToken }))).code).toBe(Code.Unauthenticated);
      const other = await rejection(client.revokeSession({ sessionId: admin.sessionId }, bearer(a.accessToken)));
      expect(other.code).toBe(Code.NotFound);
    });
  });

  describe("roles", () => {
    it("an admin makes a student a doctor; tokens issued afterwards carry the role; the change is audited", async () => {
      const u = await newUser();
      const before = await login(u.username);
      const { user } = await client.setRole({ userId: u.user.id, role: Role.DOCTOR }, bearer(admin.accessToken));
      expect(user!.role).toBe(Role.DOCTOR);
      const { tokens } = await client.refresh({ refreshToken: before.refreshToken });
      expect((await client.getMe({}, bearer(tokens!.accessToken))).role).toBe(Role.DOCTOR);
      const { events } = await client.listAuditEvents({ userId: u.user.id }, bearer(admin.accessToken));
      expect(events.find((e) => e.event === "role_changed")).toMatchObject({
        details: { from: "student", to: "doctor" },
      });
    });

    it("a student calling SetRole is permission_denied, and nobody's role changes", async () => {
      const u = await newUser();
      const t = await login(u.username);
      const err = await rejection(client.setRole({ userId: u.user.id, role: Role.ADMIN }, bearer(t.accessToken)));
      expect(err.code).toBe(Code.PermissionDenied);
      expect(err.rawMessage).toBe("the student role may not call SetRole");
      expect((await client.getMe({}, bearer(t.accessToken))).user!.role).toBe(Role.STUDENT);
    });

    it("SetRole without a token is unauthenticated; to a machine role it is invalid_argument", async () => {
      const u = await newUser();
      expect((await rejection(client.setRole({ userId: u.user.id, role: Role.ADMIN }))).code).toBe(
        Code.Unauthenticated,
      );
      expect(
        (await rejection(client.setRole({ userId: u.user.id, role: Role.DEVICE }, bearer(admin.accessToken)))).code,
      ).toBe(Code.InvalidArgument);
      expect(
        (
          await rejection(
            client.setRole(
              { userId: "00000000-0000-4000-8000-000000000000", role: Role.DOCTOR },
              bearer(admin.accessToken),
            ),
          )
        ).code,
      ).toBe(Code.NotFound);
    });

    it("the last admin cannot demote themselves (failed_precondition)", async () => {
      const me = await client.getMe({}, bearer(admin.accessToken));
      const err = await rejection(
        client.setRole({ userId: me.subject, role: Role.STUDENT }, bearer(admin.accessToken)),
      );
      expect(err.code).toBe(Code.FailedPrecondition);
    });
  });

  describe("ListUsers", () => {
    it("pages every account in id order for an admin and for a service; a student and a device are refused", async () => {
      const made = [await newUser(), await newUser(), await newUser()];
      const seen: string[] = [];
      let after = "";
      for (;;) {
        const { users } = await client.listUsers({ pageSize: 2, afterUserId: after }, bearer(admin.accessToken));
        if (users.length === 0) break;
        expect(users.length).toBeLessThanOrEqual(2);
        seen.push(...users.map((u) => u.id));
        after = users[users.length - 1]!.id;
      }
      expect(seen).toEqual([...seen].sort());
      expect(new Set(seen).size).toBe(seen.length);
      for (const m of made) expect(seen).toContain(m.user.id);

      const service = await client.createApiKey(
        { name: `notifier-${unique()}`, kind: PrincipalKind.SERVICE },
        bearer(admin.accessToken),
      );
      const serviceToken = (await client.exchangeApiKey({ apiKey: service.key })).accessToken;
      const { users } = await client.listUsers({ pageSize: 500 }, bearer(serviceToken));
      const listed = users.find((u) => u.id === made[0]!.user.id)!;
      expect(listed).toMatchObject({ email: made[0]!.email, firstName: "Ada", role: Role.STUDENT, mfaEnabled: false });

      const student = await login(made[1]!.username);
      const refused = await rejection(client.listUsers({}, bearer(student.accessToken)));
      expect(refused.code).toBe(Code.PermissionDenied);
      const device = await client.createApiKey(
        { name: `meter-${unique()}`, kind: PrincipalKind.DEVICE },
        bearer(admin.accessToken),
      );
      const deviceToken = (await client.exchangeApiKey({ apiKey: device.key })).accessToken;
      expect((await rejection(client.listUsers({}, bearer(deviceToken)))).code).toBe(Code.PermissionDenied);
      expect((await rejection(client.listUsers({}))).code).toBe(Code.Unauthenticated);
    });

    it("a page size over 500 or an after id that is not a UUID is invalid_argument naming the field", async () => {
      const big = await rejection(client.listUsers({ pageSize: 501 }, bearer(admin.accessToken)));
      expect(big.code).toBe(Code.InvalidArgument);
      expect(big.rawMessage).toContain("page_size");
      const bad = await rejection(client.listUsers({ afterUserId: "' or 1=1 --" }, bearer(admin.accessToken)));
      expect(bad.code).toBe(Code.InvalidArgument);
      expect(bad.rawMessage).toContain("after_user_id");
    });
  });

  describe("API keys", () => {
    it("a device key is shown once, listed without its secret, and exchanged for a device token", async () => {
      const name = `scanner-${unique()}`;
      const created = await client.createApiKey({ name, kind: PrincipalKind.DEVICE }, bearer(admin.accessToken));
      expect(created.key).toMatch(/^mmk_[A-Za-z0-9_-]{43}$/);
      expect(created.key.startsWith(created.apiKey!.prefix)).toBe(true);
      const listed = await client.listApiKeys({}, bearer(admin.accessToken));
      const entry = listed.apiKeys.find((k) => k.id === created.apiKey!.id)!;
      expect(entry).toMatchObject({ name, kind: PrincipalKind.DEVICE });
      expect(JSON.stringify(listed, (_k, v) => (typeof v === "bigint" ? String(v) : v))).not.toContain(created.key);

      const token = await client.exchangeApiKey({ apiKey: created.key });
      expect(token.expiresInSeconds).toBe(900);
      const me = await client.getMe({}, bearer(token.accessToken));
      expect(me).toMatchObject({ subject: name, role: Role.DEVICE, kind: PrincipalKind.DEVICE });
      expect(me.user).toBeUndefined();
      // A device is not an admin and has no sessions.
      expect((await rejection(client.listApiKeys({}, bearer(token.accessToken)))).code).toBe(Code.PermissionDenied);
      expect((await rejection(client.listSessions({}, bearer(token.accessToken)))).code).toBe(Code.PermissionDenied);
    });

    it("a revoked key can no longer be exchanged; revoking is audited", async () => {
      const created = await client.createApiKey(
        { name: `ingest-${unique()}`, kind: PrincipalKind.SERVICE },
        bearer(admin.accessToken),
      );
      const token = await client.exchangeApiKey({ apiKey: created.key });
      expect((await client.getMe({}, bearer(token.accessToken))).kind).toBe(PrincipalKind.SERVICE);
      await client.revokeApiKey({ id: created.apiKey!.id }, bearer(admin.accessToken));
      const err = await rejection(client.exchangeApiKey({ apiKey: created.key }));
      expect(err.code).toBe(Code.Unauthenticated);
      expect(err.rawMessage).toBe("the API key is not valid");
      const active = await client.listApiKeys({}, bearer(admin.accessToken));
      expect(active.apiKeys.map((k) => k.id)).not.toContain(created.apiKey!.id);
      const all = await client.listApiKeys({ includeRevoked: true }, bearer(admin.accessToken));
      expect(all.apiKeys.find((k) => k.id === created.apiKey!.id)!.revokeTime).toBeDefined();
      const { events } = await client.listAuditEvents({ pageSize: 200 }, bearer(admin.accessToken));
      expect(events.some((e) => e.event === "api_key_revoked" && e.details.api_key_id === created.apiKey!.id)).toBe(
        true,
      );
    });

    it("a student cannot create keys, a made-up key is refused, and the kind must be device or service", async () => {
      const u = await newUser();
      const t = await login(u.username);
      expect(
        (await rejection(client.createApiKey({ name: "x", kind: PrincipalKind.DEVICE }, bearer(t.accessToken)))).code,
      ).toBe(Code.PermissionDenied);
      expect((await rejection(client.exchangeApiKey({ apiKey: "mmk_made-up" }))).code).toBe(Code.Unauthenticated);
      const kind = await rejection(
        client.createApiKey({ name: "x", kind: PrincipalKind.USER }, bearer(admin.accessToken)),
      );
      expect(kind.code).toBe(Code.InvalidArgument);
      expect(kind.rawMessage).toMatch(/PRINCIPAL_KIND_DEVICE or PRINCIPAL_KIND_SERVICE/);
    });
  });

  describe("MFA", () => {
    async function enrolled() {
      const u = await newUser();
      const t = await login(u.username);
      const { secret, otpauthUri } = await client.enrollMfa({}, bearer(t.accessToken));
      expect(otpauthUri).toMatch(/^otpauth:\/\/totp\/medmesh:.*secret=.*algorithm=SHA1&digits=6&period=30/);
      const wrong = await rejection(
        client.confirmMfa({ code: totp(secret, new Date(now().getTime() - 300_000)) }, bearer(t.accessToken)),
      );
      expect(wrong.code).toBe(Code.InvalidArgument);
      const { backupCodes } = await client.confirmMfa({ code: totp(secret, now()) }, bearer(t.accessToken));
      return { ...u, secret, backupCodes, tokens: t };
    }

    async function challenge(loginName: string): Promise<string> {
      const res = await client.login({ login: loginName, password });
      if (res.result.case !== "mfaChallenge") throw new Error("expected an MFA challenge");
      return res.result.value.challengeId;
    }

    it("enrolment answers 10 distinct backup codes once; login then asks for a code and VerifyMfa gives tokens", async () => {
      const u = await enrolled();
      expect(new Set(u.backupCodes).size).toBe(10);
      expect((await client.getMe({}, bearer(u.tokens.accessToken))).user!.mfaEnabled).toBe(true);
      expect((await rejection(client.enrollMfa({}, bearer(u.tokens.accessToken)))).code).toBe(Code.FailedPrecondition);
      offsetMs = 30_000; // the enrolment code's step is used up
      const { tokens } = await client.verifyMfa({
        challengeId: await challenge(u.username),
        code: totp(u.secret, now()),
      });
      expect((await client.getMe({}, bearer(tokens!.accessToken))).subject).toBe(u.user.id);
    });

    it("a wrong code is unauthenticated, and a used code cannot be replayed inside its window", async () => {
      const u = await enrolled();
      offsetMs = 30_000;
      const c = await challenge(u.username);
      const code = totp(u.secret, now());
      const wrong = String((Number(code) + 1) % 1_000_000).padStart(6, "0");
      expect((await rejection(client.verifyMfa({ challengeId: c, code: wrong }))).code).toBe(Code.Unauthenticated);
      await client.verifyMfa({ challengeId: c, code });
      // The same challenge is used up, and the same code on a fresh challenge is a replay.
      expect((await rejection(client.verifyMfa({ challengeId: c, code }))).code).toBe(Code.Unauthenticated);
      const replay = await rejection(client.verifyMfa({ challengeId: await challenge(u.username), code }));
      expect(replay.code).toBe(Code.Unauthenticated);
      expect(replay.rawMessage).toBe("the code is not valid");
      // The next step's code works.
      offsetMs = 60_000;
      await client.verifyMfa({ challengeId: await challenge(u.username), code: totp(u.secret, now()) });
    });

    it("a backup code works once, in any case and without dashes, and never again", async () => {
      const u = await enrolled();
      const code = u.backupCodes[0]!;
      await client.verifyMfa({ challengeId: await challenge(u.username), code: code.toUpperCase().replace(/-/g, "") });
      const again = await rejection(client.verifyMfa({ challengeId: await challenge(u.username), code }));
      expect(again.code).toBe(Code.Unauthenticated);
      await client.verifyMfa({ challengeId: await challenge(u.username), code: u.backupCodes[1]! });
      const { events } = await client.listAuditEvents({ userId: u.user.id }, bearer(admin.accessToken));
      expect(events.filter((e) => e.event === "mfa_used" && e.details.method === "backup_code")).toHaveLength(2);
      expect(events.some((e) => e.event === "mfa_enrolled")).toBe(true);
    });

    it("an expired challenge or a made-up one is unauthenticated", async () => {
      const u = await enrolled();
      const c = await challenge(u.username);
      offsetMs = 6 * 60_000;
      expect((await rejection(client.verifyMfa({ challengeId: c, code: totp(u.secret, now()) }))).rawMessage).toMatch(
        /challenge is unknown, used or expired/,
      );
      expect((await rejection(client.verifyMfa({ challengeId: "made-up", code: "123456" }))).code).toBe(
        Code.Unauthenticated,
      );
    });
  });

  describe("lockout", () => {
    it("five wrong passwords lock the account for a minute with RetryInfo; the next streak locks for two", async () => {
      const u = await newUser();
      for (let i = 0; i < 4; i++) {
        expect((await rejection(client.login({ login: u.username, password: `wrong password ${i}` }))).code).toBe(
          Code.Unauthenticated,
        );
      }
      const locked = await rejection(client.login({ login: u.username, password: "wrong password 4" }));
      expect(locked.code).toBe(Code.ResourceExhausted);
      expect(locked.findDetails(RetryInfoSchema)[0]!.retryDelay!.seconds).toBe(60n);
      // While locked even the right password is refused, without being checked.
      const still = await rejection(client.login({ login: u.username, password }));
      expect(still.code).toBe(Code.ResourceExhausted);
      expect(Number(still.findDetails(RetryInfoSchema)[0]!.retryDelay!.seconds)).toBeLessThanOrEqual(60);

      offsetMs = 61_000;
      for (let i = 0; i < 4; i++) await rejection(client.login({ login: u.email, password: `wrong again ${i}` }));
      const doubled = await rejection(client.login({ login: u.email, password: "wrong again 4" }));
      expect(doubled.findDetails(RetryInfoSchema)[0]!.retryDelay!.seconds).toBe(120n);

      offsetMs = 61_000 + 121_000;
      expect((await login(u.username)).accessToken).toBeTruthy();
      const { events } = await client.listAuditEvents({ userId: u.user.id }, bearer(admin.accessToken));
      expect(events.filter((e) => e.event === "account_locked")).toHaveLength(2);
      expect(events.filter((e) => e.event === "login_failed")).toHaveLength(10);
    });

    it("wrong MFA codes count towards the same lockout", async () => {
      const u = await newUser();
      const t = await login(u.username);
      const { secret } = await client.enrollMfa({}, bearer(t.accessToken));
      await client.confirmMfa({ code: totp(secret, now()) }, bearer(t.accessToken));
      const res = await client.login({ login: u.username, password });
      const c = res.result.case === "mfaChallenge" ? res.result.value.challengeId : "";
      const codes: ConnectError[] = [];
      for (let i = 0; i < 5; i++)
        codes.push(
          await rejection(
            client.verifyMfa({ challengeId: c, code: "000000" === totp(secret, now()) ? "111111" : "000000" }),
          ),
        );
      expect(codes.map((e) => e.code)).toEqual([...Array(4).fill(Code.Unauthenticated), Code.ResourceExhausted]);
    });
  });

  describe("email verification and password reset", () => {
    it("VerifyEmail with the delivered token marks the address verified, once", async () => {
      const u = await newUser();
      const t = await login(u.username);
      await client.requestEmailVerification({}, bearer(t.accessToken));
      const d = lastDelivery("email_verification", u.user.id)!;
      expect(d.email).toBe(u.email);
      await client.verifyEmail({ token: d.token });
      expect((await client.getMe({}, bearer(t.accessToken))).user!.emailVerified).toBe(true);
      expect((await rejection(client.verifyEmail({ token: d.token }))).code).toBe(Code.InvalidArgument);
      expect((await rejection(client.requestEmailVerification({}, bearer(t.accessToken)))).code).toBe(
        Code.FailedPrecondition,
      );
    });

    it("a reset token sets a new password once, ends every session, and the old password stops working", async () => {
      const u = await newUser();
      const t = await login(u.username);
      await client.requestPasswordReset({ email: u.email.toUpperCase() });
      const d = lastDelivery("password_reset", u.user.id)!;
      const fresh = "a brand new passphrase";
      await client.resetPassword({ token: d.token, newPassword: fresh });
      expect((await rejection(client.refresh({ refreshToken: t.refreshToken }))).code).toBe(Code.Unauthenticated);
      expect((await rejection(client.login({ login: u.username, password }))).code).toBe(Code.Unauthenticated);
      expect((await login(u.username, fresh)).accessToken).toBeTruthy();
      const reuse = await rejection(client.resetPassword({ token: d.token, newPassword: "yet another passphrase" }));
      expect(reuse.code).toBe(Code.InvalidArgument);
      expect(reuse.rawMessage).toMatch(/unknown, already used or expired/);
    });

    it("a reset token older than 30 minutes is refused", async () => {
      const u = await newUser();
      await client.requestPasswordReset({ email: u.email });
      const d = lastDelivery("password_reset", u.user.id)!;
      offsetMs = 31 * 60_000;
      expect((await rejection(client.resetPassword({ token: d.token, newPassword: "too late passphrase" }))).code).toBe(
        Code.InvalidArgument,
      );
      offsetMs = 0;
      expect((await login(u.username)).accessToken).toBeTruthy();
    });

    it("a reset for an unknown address answers the same and delivers nothing", async () => {
      const before = outbox.length;
      await client.requestPasswordReset({ email: `nobody-${unique()}@example.org` });
      expect(outbox.length).toBe(before);
    });
  });

  describe("signing keys", () => {
    it("a token verifies with verifyAccessToken against the published JWKS and carries the documented claims", async () => {
      const u = await newUser();
      const t = await login(u.username);
      const jwks = JSON.parse((await client.getJwks({})).jwksJson);
      const r = verifyAccessToken(t.accessToken, jwks, { now: now() });
      if (!r.ok) throw new Error(r.message);
      expect(r.claims).toMatchObject({
        iss: "medmesh-identity",
        aud: "medmesh",
        sub: u.user.id,
        role: "student",
        kind: "user",
        sid: t.sessionId,
      });
      expect(r.claims.exp - r.claims.iat).toBe(900);
      expect(r.claims.nbf).toBe(r.claims.iat);
      expect(r.claims.jti).toMatch(/^[0-9a-f-]{36}$/);
      const device = await client.createApiKey(
        { name: `probe-${unique()}`, kind: PrincipalKind.DEVICE },
        bearer(admin.accessToken),
      );
      const d = verifyAccessToken((await client.exchangeApiKey({ apiKey: device.key })).accessToken, jwks, {
        now: now(),
      });
      expect(d.ok && d.claims).toMatchObject({ sub: device.apiKey!.name, role: "device", kind: "device" });
      expect(d.ok && "sid" in d.claims).toBe(false);
    });

    it("GetJwks publishes Ed25519 keys; after RotateSigningKey both old and new tokens verify", async () => {
      const before = await client.getJwks({});
      expect(before.keys.length).toBeGreaterThanOrEqual(1);
      expect(before.keys[0]).toMatchObject({ kty: "OKP", crv: "Ed25519", alg: "EdDSA", use: "sig" });
      expect(JSON.parse(before.jwksJson).keys.map((k: { kid: string }) => k.kid)).toEqual(
        before.keys.map((k) => k.kid),
      );
      const u = await newUser();
      const old = await login(u.username);
      const { kid } = await client.rotateSigningKey({}, bearer(admin.accessToken));
      const after = await client.getJwks({});
      expect(after.keys.map((k) => k.kid)).toEqual(expect.arrayContaining([kid, before.keys[0]!.kid]));
      const fresh = await login(u.username);
      expect(JSON.parse(Buffer.from(fresh.accessToken.split(".")[0]!, "base64url").toString()).kid).toBe(kid);
      expect((await client.getMe({}, bearer(old.accessToken))).subject).toBe(u.user.id);
      expect((await client.getMe({}, bearer(fresh.accessToken))).subject).toBe(u.user.id);
      expect((await rejection(client.rotateSigningKey({}, bearer(fresh.accessToken)))).code).toBe(
        Code.PermissionDenied,
      );
    });

    it("rotates by itself once the key is older than IDENTITY_KEY_ROTATION_HOURS, and drops the old key after its last token expired", async () => {
      const kidOf = (token: string) =>
        JSON.parse(Buffer.from(token.split(".")[0]!, "base64url").toString()).kid as string;
      const u = await newUser();
      const before = kidOf((await login(u.username)).accessToken);
      offsetMs = 721 * 3600_000;
      const rotated = await login(u.username);
      expect(kidOf(rotated.accessToken)).not.toBe(before);
      await keys.reload();
      expect((await client.getJwks({})).keys.map((k) => k.kid)).toEqual(
        expect.arrayContaining([before, kidOf(rotated.accessToken)]),
      );
      offsetMs += 17 * 60_000;
      await keys.reload();
      const kids = (await client.getJwks({})).keys.map((k) => k.kid);
      expect(kids).toContain(kidOf(rotated.accessToken));
      expect(kids).not.toContain(before);
      offsetMs = 0;
      await keys.reload();
      // Keys from before the jump were deleted as a month had "passed"; sign in again in real time.
      admin = await login("root");
    });
  });

  describe("forged and stale access tokens fail closed", () => {
    let victim: Awaited<ReturnType<typeof newUser>>;
    let valid: Tokens;
    beforeAll(async () => {
      victim = await newUser();
      valid = await login(victim.username);
    });
    const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
    const payload = () => JSON.parse(Buffer.from(valid.accessToken.split(".")[1]!, "base64url").toString());
    const refused = async (token: string, why: RegExp) => {
      const err = await rejection(client.setRole({ userId: victim.user.id, role: Role.ADMIN }, bearer(token)));
      expect(err.code).toBe(Code.Unauthenticated);
      expect(err.rawMessage).toMatch(why);
      const me = await rejection(client.getMe({}, bearer(token)));
      expect(me.code).toBe(Code.Unauthenticated);
    };

    it("alg none claiming admin is refused", async () => {
      await refused(`${b64({ alg: "none", typ: "JWT" })}.${b64({ ...payload(), role: "admin" })}.`, /not a JWT/);
      await refused(
        `${b64({ alg: "none", typ: "JWT", kid: "x" })}.${b64({ ...payload(), role: "admin" })}.AAAA`,
        /signed with "none"/,
      );
    });

    it("HS256 signed with the published public key is refused", async () => {
      const { createHmac } = await import("node:crypto");
      const jwk = (await client.getJwks({})).keys[0]!;
      const input = `${b64({ alg: "HS256", typ: "JWT", kid: jwk.kid })}.${b64({ ...payload(), role: "admin" })}`;
      for (const secret of [Buffer.from(jwk.x, "base64url"), Buffer.from(jwk.x), Buffer.from(JSON.stringify(jwk))]) {
        await refused(
          `${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`,
          /signed with "HS256"/,
        );
      }
    });

    it("an expired token is refused", async () => {
      offsetMs = -3600_000;
      const old = await login(victim.username);
      offsetMs = 0;
      await refused(old.accessToken, /expired/);
    });

    it("a token that is not valid yet is refused", async () => {
      offsetMs = 3600_000;
      const early = await login(victim.username);
      offsetMs = 0;
      await refused(early.accessToken, /not valid yet/);
    });

    it("a token signed with the real key but another issuer or audience is refused", async () => {
      const key = await keys.signingKey();
      await refused(signAccessToken({ ...payload(), iss: "someone-else" }, key), /issued by someone else/);
      await refused(signAccessToken({ ...payload(), aud: "another-app" }, key), /another audience/);
    });

    it("a token signed with a key that is not in the JWKS is refused", async () => {
      const { privateKey } = generateKeyPairSync("ed25519");
      const claims = newAccessClaims({ sub: victim.user.id, role: "admin", kind: "user", sid: valid.sessionId }, now());
      await refused(signAccessToken(claims, { kid: "attacker-key", privateKey }), /not in the key set/);
      const realKid = (await keys.signingKey()).kid;
      await refused(
        signJws({ alg: "EdDSA", typ: "JWT", kid: realKid }, claims, privateKey),
        /signature does not match/,
      );
    });

    it("a tampered payload (student -> admin) is refused", async () => {
      const [h, , s] = valid.accessToken.split(".");
      await refused(`${h}.${b64({ ...payload(), role: "admin" })}.${s}`, /signature does not match/);
    });

    it("garbage in the authorization header is refused on authenticated methods and ignored on public ones", async () => {
      await refused("not.a.token", /not a JWT/);
      expect((await client.getJwks({}, bearer("not.a.token"))).keys.length).toBeGreaterThan(0);
      expect((await rejection(client.getMe({}))).rawMessage).toBe("sign in to call this method");
    });

    it("the untampered token still works after all of the above", async () => {
      expect((await client.getMe({}, bearer(valid.accessToken))).role).toBe(Role.STUDENT);
    });
  });

  describe("SQL metacharacters are data, in every string field", () => {
    const nasty = `'; DROP TABLE users; -- " \\ %_ $1`;

    it("free-text fields are stored as given; pattern fields are invalid_argument; credentials simply do not match", async () => {
      const id = unique();
      const email = `o'brien+${id}@example.org`;
      const { user } = await client.register({
        email,
        username: `obrien_${id}`,
        password: `${nasty} long enough`,
        firstName: nasty,
        lastName: `Robert'); DROP TABLE sessions;--`,
      });
      expect(user).toMatchObject({ firstName: nasty.trim(), lastName: `Robert'); DROP TABLE sessions;--` });
      const t = await login(email, `${nasty} long enough`);
      expect((await client.getMe({}, bearer(t.accessToken))).user!.email).toBe(email);

      expect(
        (
          await rejection(
            client.register({
              email: `x-${id}@example.org`,
              username: `a' OR '1'='1`,
              password,
              firstName: "A",
              lastName: "B",
            }),
          )
        ).code,
      ).toBe(Code.InvalidArgument);
      expect(
        (
          await rejection(
            client.register({ email: nasty, username: `u_${id}x`, password, firstName: "A", lastName: "B" }),
          )
        ).code,
      ).toBe(Code.InvalidArgument);
      for (const loginName of [`' OR '1'='1`, `admin'--`, nasty]) {
        expect((await rejection(client.login({ login: loginName, password: nasty }))).code).toBe(Code.Unauthenticated);
      }
      expect((await rejection(client.login({ login: `obrien_${id}`, password: `' OR '1'='1` }))).code).toBe(
        Code.Unauthenticated,
      );
      expect((await rejection(client.refresh({ refreshToken: nasty }))).code).toBe(Code.Unauthenticated);
      expect((await rejection(client.exchangeApiKey({ apiKey: `mmk_${nasty}` }))).code).toBe(Code.Unauthenticated);
      expect((await rejection(client.verifyEmail({ token: nasty }))).code).toBe(Code.InvalidArgument);
      expect((await rejection(client.resetPassword({ token: nasty, newPassword: password }))).code).toBe(
        Code.InvalidArgument,
      );
      expect((await rejection(client.verifyMfa({ challengeId: nasty, code: "123456" }))).code).toBe(
        Code.Unauthenticated,
      );
      expect((await rejection(client.verifyMfa({ challengeId: "x", code: nasty }))).code).toBe(Code.InvalidArgument);
      expect(
        (await rejection(client.createApiKey({ name: nasty, kind: PrincipalKind.DEVICE }, bearer(admin.accessToken))))
          .code,
      ).toBe(Code.InvalidArgument);
      expect((await rejection(client.revokeSession({ sessionId: nasty }, bearer(t.accessToken)))).code).toBe(
        Code.InvalidArgument,
      );
      expect(
        (await rejection(client.setRole({ userId: nasty, role: Role.DOCTOR }, bearer(admin.accessToken)))).code,
      ).toBe(Code.InvalidArgument);
      expect((await rejection(client.listAuditEvents({ userId: nasty }, bearer(admin.accessToken)))).code).toBe(
        Code.InvalidArgument,
      );
      await client.requestPasswordReset({ email: `x'--@example.org` });
      // Everything is still there.
      expect((await client.getMe({}, bearer(admin.accessToken))).user!.role).toBe(Role.ADMIN);
      expect((await client.refresh({ refreshToken: t.refreshToken })).tokens).toBeDefined();
    });
  });

  describe("audit log", () => {
    it("records security events without any secret in them", async () => {
      const u = await newUser();
      await rejection(client.login({ login: u.username, password: "a wrong password" }));
      const t = await login(u.username);
      await client.refresh({ refreshToken: t.refreshToken });
      const { events } = await client.listAuditEvents({ userId: u.user.id, pageSize: 200 }, bearer(admin.accessToken));
      expect(events.map((e) => e.event).reverse()).toEqual([
        "registered",
        "login_failed",
        "login_succeeded",
        "token_refreshed",
      ]);
      const page1 = await client.listAuditEvents({ userId: u.user.id, pageSize: 2 }, bearer(admin.accessToken));
      const page2 = await client.listAuditEvents(
        { userId: u.user.id, pageSize: 2, beforeId: page1.events[1]!.id },
        bearer(admin.accessToken),
      );
      expect([...page1.events, ...page2.events].map((e) => e.id)).toEqual(events.map((e) => e.id));
      const all = JSON.stringify(await client.listAuditEvents({ pageSize: 200 }, bearer(admin.accessToken)), (_k, v) =>
        typeof v === "bigint" ? String(v) : v,
      );
      for (const secret of [password, "a wrong password", t.refreshToken, t.accessToken, ...outbox.map((d) => d.token)])
        expect(all).not.toContain(secret);
    });
  });
});
