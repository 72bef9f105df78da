import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  MfaChallengeSchema,
  type IdentityService,
  type MfaChallenge,
} from "../../gen/medmesh/identity/v1/identity_pb.js";
import { invalidArgument } from "../../platform/grpc/errors.js";
import { userOf } from "./caller.js";
import type { IdentityContext } from "./context.js";
import { clientAddressOf } from "./client.js";
import { issueOneTimeToken, startSession } from "./issue-tokens.js";
import { mfaEnabledEvent, signedInEvent } from "./user-events.js";
import { failedCredential, refuseIfLocked } from "./lockout.js";
import type { UserRow } from "./tables.js";
import { hashToken } from "./tokens.js";
import { base32Encode, matchTotp, newTotpSecret, otpauthUri } from "./totp.js";
import { accountOf, mfaEnabled, refuseIfDisabled } from "./users.js";

const MFA_CHALLENGE_MS = 5 * 60_000;
const BACKUP_CODES = 10;

const alreadyOn = () => new ConnectError("MFA is already on for this account", Code.FailedPrecondition);

/** 16 base32 characters (80 bits) in groups of four: typed by hand, hashed like a token. */
function newBackupCode(): string {
  return base32Encode(randomBytes(10)).toLowerCase().match(/.{4}/g)!.join("-");
}

const normaliseBackupCode = (code: string) => code.replace(/-/g, "").toLowerCase();

/** What Login answers instead of tokens when MFA is on: a challenge only VerifyMfa can redeem. */
export async function mfaChallenge(identity: IdentityContext, user: UserRow): Promise<MfaChallenge> {
  const { token, expiresAt } = await issueOneTimeToken(identity, user.id, "mfa_login", MFA_CHALLENGE_MS);
  await identity.audit({ event: "login_mfa_required", userId: user.id });
  return create(MfaChallengeSchema, { challengeId: token, expireTime: timestampFromDate(expiresAt) });
}

type Handlers = Pick<ServiceImpl<typeof IdentityService>, "enrollMfa" | "confirmMfa" | "verifyMfa">;

export function mfaHandlers(identity: IdentityContext): Handlers {
  const { store, audit, now } = identity;
  return {
    async enrollMfa(_req, ctx) {
      const user = await accountOf(identity, userOf(ctx));
      if (await mfaEnabled(identity, user.id)) throw alreadyOn();
      const secret = newTotpSecret();
      await store.startMfaEnrolment(user.id, secret, now());
      return { secret, otpauthUri: otpauthUri(secret, user.email) };
    },

    async confirmMfa(req, ctx) {
      const userId = userOf(ctx);
      const mfa = await store.mfa(userId);
      if (!mfa) throw new ConnectError("start with EnrollMfa", Code.FailedPrecondition);
      if (mfa.confirmed_at) throw alreadyOn();
      const step = matchTotp(mfa.secret, req.code, now());
      if (step === undefined)
        throw invalidArgument([
          { field: "code", description: "does not match; check the authenticator app and its clock" },
        ]);
      const codes = Array.from({ length: BACKUP_CODES }, newBackupCode);
      const hashes = codes.map((c) => hashToken(normaliseBackupCode(c)));
      // A concurrent confirmation may have won since the read above.
      if (!(await store.confirmMfa(userId, step, hashes, now()))) throw alreadyOn();
      const at = now();
      await audit({ event: "mfa_enrolled", userId, actor: userId }, at, mfaEnabledEvent(userId, at));
      return { backupCodes: codes };
    },

    async verifyMfa(req, ctx) {
      const challengeHash = hashToken(req.challengeId);
      const expired = () =>
        new ConnectError("the sign-in challenge is unknown, used or expired; sign in again", Code.Unauthenticated);
      const pending = await store.peekOneTimeToken(challengeHash, "mfa_login", now());
      if (!pending) throw expired();
      const user = await store.userById(pending.user_id);
      const mfa = await store.mfa(pending.user_id);
      if (!user || !mfa?.confirmed_at) throw expired();
      refuseIfLocked(identity, user);
      let method: "totp" | "backup_code" | undefined;
      if (/^\d{6}$/.test(req.code)) {
        const step = matchTotp(mfa.secret, req.code, now(), Number(mfa.last_used_step));
        if (step !== undefined && (await store.useTotpStep(user.id, step))) method = "totp";
      } else if (await store.useBackupCode(user.id, hashToken(normaliseBackupCode(req.code)), now())) {
        method = "backup_code";
      }
      if (!method)
        throw await failedCredential(
          identity,
          user,
          "mfa_failed",
          new ConnectError("the code is not valid", Code.Unauthenticated),
        );
      // Only one caller can turn a challenge into a session.
      if (!(await store.consumeOneTimeToken(challengeHash, "mfa_login", now()))) throw expired();
      refuseIfDisabled(user);
      await store.clearLoginFailures(user.id);
      const tokens = await startSession(identity, user);
      await audit({ event: "mfa_used", userId: user.id, details: { method } });
      const at = now();
      await audit(
        { event: "login_succeeded", userId: user.id, details: { session_id: tokens.sessionId, mfa: method } },
        at,
        signedInEvent(user.id, tokens.sessionId, clientAddressOf(ctx), at),
      );
      return { tokens };
    },
  };
}
