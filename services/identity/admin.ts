import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { callerOf } from "../../platform/grpc/caller.js";
import type { IdentityContext } from "./context.js";
import { roleName, toAuditEvent, toUser } from "./model.js";
import type { HumanRole } from "./tables.js";
import { roleChangedEvent } from "./user-events.js";
import { mfaEnabled } from "./users.js";

const AUDIT_PAGE_SIZE = 50;
const USERS_PAGE_SIZE = 100;

type Handlers = Pick<ServiceImpl<typeof IdentityService>, "setRole" | "listAuditEvents" | "listUsers">;

export function adminHandlers(identity: IdentityContext): Handlers {
  const { store, now } = identity;
  return {
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
        const at = now();
        await tx.audit(
          { event: "role_changed", userId: user.id, actor, details: { from: user.role, to: role } },
          at,
          roleChangedEvent(user.id, user.role, role, actor, at),
        );
        return row;
      });
      return { user: toUser(updated, await mfaEnabled(identity, updated.id)) };
    },

    async listUsers(req) {
      const rows = await store.usersAfter(req.afterUserId || undefined, req.pageSize || USERS_PAGE_SIZE);
      const mfa = await store.withConfirmedMfa(rows.map((r) => r.id));
      return { users: rows.map((r) => toUser(r, mfa.has(r.id))) };
    },

    async listAuditEvents(req) {
      const rows = await store.auditEvents(
        req.pageSize || AUDIT_PAGE_SIZE,
        req.userId || undefined,
        req.beforeId ? Number(req.beforeId) : undefined,
      );
      return { events: rows.map(toAuditEvent) };
    },
  };
}
