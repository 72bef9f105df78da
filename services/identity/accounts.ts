import { randomUUID } from "node:crypto";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { isUniqueViolation } from "../../platform/db/errors.js";
import { callerOf } from "../../platform/grpc/caller.js";
import type { IdentityContext } from "./context.js";
import { clientAddressOf } from "./client.js";
import { startSession } from "./issue-tokens.js";
import { registeredEvent, signedInEvent } from "./user-events.js";
import { failedCredential, refuseIfLocked } from "./lockout.js";
import { mfaChallenge } from "./mfa.js";
import { kindFromName, toUser } from "./model.js";
import { decoyHash, hashPassword, needsRehash, verifyPassword } from "./passwords.js";
import type { HumanRole, UserRow } from "./tables.js";
import { accountOf, mfaEnabled, refuseIfDisabled } from "./users.js";

const badLogin = () => new ConnectError("the login or password is wrong", Code.Unauthenticated);

type Handlers = Pick<ServiceImpl<typeof IdentityService>, "register" | "login" | "getMe">;

export function accountHandlers(identity: IdentityContext): Handlers {
  const { store, audit, now, scrypt } = identity;
  const decoy = decoyHash(scrypt);

  /** Whether this registration names the configured first admin while there is none yet. */
  async function isBootstrapAdmin(email: string): Promise<boolean> {
    const configured = identity.bootstrapAdminEmail;
    return (
      configured !== undefined &&
      email.toLowerCase() === configured.trim().toLowerCase() &&
      (await store.adminCount()) === 0
    );
  }

  return {
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
      const bootstrap = await isBootstrapAdmin(email);
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
        registeredEvent(user, at),
      );
      return { user: toUser(user, false) };
    },

    async login(req, ctx) {
      const user = await store.userByLogin(req.login.trim());
      if (!user) {
        // Spend the same effort as for a real account, then say the same thing.
        await verifyPassword(req.password, await decoy);
        await audit({ event: "login_failed", details: { reason: "unknown_account" } });
        throw badLogin();
      }
      refuseIfLocked(identity, user);
      if (!(await verifyPassword(req.password, user.password_hash))) {
        throw await failedCredential(identity, user, "login_failed", badLogin());
      }
      refuseIfDisabled(user);
      await store.clearLoginFailures(user.id);
      if (needsRehash(user.password_hash, scrypt))
        await store.setPassword(user.id, await hashPassword(req.password, scrypt), now());
      if (await mfaEnabled(identity, user.id)) {
        return { result: { case: "mfaChallenge", value: await mfaChallenge(identity, user) } };
      }
      const tokens = await startSession(identity, user);
      const at = now();
      await audit(
        { event: "login_succeeded", userId: user.id, details: { session_id: tokens.sessionId } },
        at,
        signedInEvent(user.id, tokens.sessionId, clientAddressOf(ctx), at),
      );
      return { result: { case: "tokens", value: tokens } };
    },

    async getMe(_req, ctx) {
      const p = callerOf(ctx);
      const base = { subject: p.subject, role: p.role, kind: kindFromName(p.kind) };
      if (p.kind !== "user") return base;
      const user = await accountOf(identity, p.subject);
      return { ...base, user: toUser(user, await mfaEnabled(identity, user.id)) };
    },
  };
}
