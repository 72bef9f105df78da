import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { sessionOf, userOf } from "./caller.js";
import type { IdentityContext } from "./context.js";
import { sessionTokens } from "./issue-tokens.js";
import { toSession } from "./model.js";
import { hashToken, newOpaqueToken } from "./tokens.js";

const REUSE = "refresh token reuse";

const badRefresh = () => new ConnectError("the refresh token is not valid; sign in again", Code.Unauthenticated);

type Handlers = Pick<ServiceImpl<typeof IdentityService>, "refresh" | "logout" | "listSessions" | "revokeSession">;

export function sessionHandlers(identity: IdentityContext): Handlers {
  const { store, audit, now } = identity;

  // A traded refresh token came back, or two uses of one raced: whoever holds the family may have
  // stolen it, so the caller revokes the session for everyone, the legitimate holder included.
  async function reuseDetected(
    found: { session_id: string; user_id: string },
    sessionRevoked: boolean,
    at: Date,
  ): Promise<ConnectError> {
    await audit(
      {
        event: "token_reuse_detected",
        userId: found.user_id,
        details: { session_id: found.session_id, session_revoked: String(sessionRevoked) },
      },
      at,
    );
    return badRefresh();
  }

  return {
    async refresh(req) {
      const oldHash = hashToken(req.refreshToken);
      const found = await store.refreshToken(oldHash);
      const at = now();
      if (!found) throw badRefresh();
      if (found.rotated_at) {
        const revoked = await store.revokeSession(found.session_id, REUSE, at);
        throw await reuseDetected(found, revoked, at);
      }
      if (found.revoked_at || new Date(found.expires_at) <= at) throw badRefresh();
      const user = await store.userById(found.user_id);
      if (!user?.active) throw badRefresh();
      const next = newOpaqueToken();
      if (!(await store.rotateRefreshToken(oldHash, hashToken(next), found.session_id, at))) {
        // Lost a race with another use of the same token: that is reuse too.
        await store.revokeSession(found.session_id, REUSE, at);
        throw await reuseDetected(found, true, at);
      }
      await audit({ event: "token_refreshed", userId: user.id, details: { session_id: found.session_id } }, at);
      return { tokens: await sessionTokens(identity, user, found.session_id, next) };
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
  };
}
