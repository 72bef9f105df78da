import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { invalidArgument } from "../../platform/grpc/errors.js";
import { logger } from "../../platform/telemetry/logger.js";
import { userOf } from "./caller.js";
import type { Delivery, IdentityContext } from "./context.js";
import { issueOneTimeToken } from "./issue-tokens.js";
import { hashPassword } from "./passwords.js";
import type { OneTimePurpose, UserRow } from "./tables.js";
import { hashToken, newOpaqueToken } from "./tokens.js";
import { linkRequestedEvent } from "./user-events.js";
import { accountOf } from "./users.js";

const log = logger.child({ component: "identity" });

const EMAIL_VERIFICATION_MS = 24 * 3600_000;
const PASSWORD_RESET_MS = 30 * 60_000;

const badLink = (field: string) =>
  invalidArgument([{ field, description: "is not valid: it is unknown, already used or expired" }]);

type Handlers = Pick<
  ServiceImpl<typeof IdentityService>,
  "requestEmailVerification" | "verifyEmail" | "requestPasswordReset" | "resetPassword" | "issueAccountLink"
>;

/** The single-use links sent to an account's address: email verification and password reset. */
export function accountLinkHandlers(identity: IdentityContext): Handlers {
  const { store, audit, now, scrypt } = identity;

  /**
   * A pending link, announced on user.events by its id only. The token made here reaches nobody
   * but an in-process `deliver` hook: the mail carries the one IssueAccountLink makes later.
   */
  async function sendLink(user: UserRow, purpose: Delivery["purpose"], ttlMs: number): Promise<void> {
    const { token, expiresAt, linkId } = await issueOneTimeToken(identity, user.id, purpose, ttlMs);
    const at = now();
    await audit(
      { event: `${purpose}_requested`, userId: user.id, details: { link_id: linkId } },
      at,
      linkRequestedEvent(purpose, user.id, linkId, expiresAt, at),
    );
    await identity.deliver({ purpose, userId: user.id, email: user.email, token, expiresAt });
  }

  return {
    async requestEmailVerification(_req, ctx) {
      const user = await accountOf(identity, userOf(ctx));
      if (user.email_verified) throw new ConnectError("the email address is already verified", Code.FailedPrecondition);
      log.info("email verification requested", { user_id: user.id });
      await sendLink(user, "email_verification", EMAIL_VERIFICATION_MS);
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
      // The same empty answer either way, so the call does not tell who has an account.
      if (user?.active) {
        log.info("password reset requested", { user_id: user.id });
        await sendLink(user, "password_reset", PASSWORD_RESET_MS);
      }
      return {};
    },

    async resetPassword(req) {
      const hash = await hashPassword(req.newPassword, scrypt);
      const purpose: OneTimePurpose = "password_reset";
      // One transaction: a used link, the new password and the end of every session happen together or not at all.
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

    async issueAccountLink(req) {
      const token = newOpaqueToken();
      const link = await store.reissueOneTimeToken(req.linkId, hashToken(token), now());
      if (!link) throw new ConnectError("the link was used, has expired or does not exist", Code.FailedPrecondition);
      const user = await store.userById(link.user_id);
      if (!user?.active) throw new ConnectError("the account is no longer active", Code.FailedPrecondition);
      log.info("account link issued for mail", { user_id: user.id, purpose: link.purpose, link_id: req.linkId });
      return {
        token,
        purpose: link.purpose,
        userId: user.id,
        email: user.email,
        firstName: user.first_name,
        expireTime: timestampFromDate(new Date(link.expires_at)),
      };
    },
  };
}
