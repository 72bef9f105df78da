import type { Client } from "@connectrpc/connect";
import type { Kysely } from "kysely";
import type { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import type { ServiceToken } from "../../platform/auth/service-token.js";
import { roleNames } from "../../platform/grpc/interceptors/access.js";
import type { Logger } from "../../platform/telemetry/logger.js";
import type { NotificationStore } from "./store.js";
import type { NotificationsDB } from "./tables.js";

const PAGE = 500;

/**
 * Copies identity's accounts into the recipient list once. user.events tells this service about
 * every account made or changed since identity had its outbox; accounts older than that would
 * otherwise get no email and no announcement until their role changed. Each page is one
 * transaction with the position reached, so a crash or an unreachable identity resumes where it
 * stopped; after the last page it never runs again.
 */
export function recipientBackfill(deps: {
  db: Kysely<NotificationsDB>;
  store: NotificationStore;
  identity: Client<typeof IdentityService>;
  token: ServiceToken;
  log: Logger;
  pageSize?: number;
}) {
  const { db, store, identity, token, log } = deps;
  const pageSize = deps.pageSize ?? PAGE;
  // Once seen complete, the periodic runs cost nothing, not even the read of the position.
  let finished = false;
  return async function runOnce(): Promise<number> {
    if (finished) return 0;
    const sync = await store.recipientSync();
    if (sync?.completed_at) {
      finished = true;
      return 0;
    }
    let after = sync?.after_user_id ?? "";
    let copied = 0;
    for (;;) {
      const { users } = await token.call((headers) =>
        identity.listUsers({ pageSize, afterUserId: after }, { headers }),
      );
      const complete = users.length < pageSize;
      after = users.at(-1)?.id ?? after;
      const rows = users
        .filter((u) => u.active)
        .map((u) => ({
          userId: u.id,
          role: roleNames.label(u.role, "unknown"),
          email: u.email,
          firstName: u.firstName,
        }));
      await db.transaction().execute((trx) => store.fillRecipients(trx, rows, { afterUserId: after, complete }));
      copied += rows.length;
      if (complete) break;
    }
    finished = true;
    log.info("accounts copied from identity into the recipient list", { copied });
    return copied;
  };
}
