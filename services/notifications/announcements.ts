import type { Kysely } from "kysely";
import type { Logger } from "../../platform/telemetry/logger.js";
import { planMany } from "./planner.js";
import type { NotificationStore } from "./store.js";
import type { NotificationRow, NotificationsDB } from "./tables.js";

const PAGE = 1000;

/**
 * Sends announcements whose time has come, a page of recipients per statement (planMany). A run that stops
 * half-way (a crash, a restart) is simply run again: the unique keys on (announcement, user) make
 * the users already served a no-op, so nobody gets it twice and nobody is skipped.
 */
export function announcer(deps: {
  db: Kysely<NotificationsDB>;
  store: NotificationStore;
  announce: (rows: NotificationRow[]) => void;
  afterWrite: () => void;
  log: Logger;
}) {
  const { db, store, log } = deps;
  return async function runOnce(): Promise<number> {
    let sent = 0;
    for (const a of await store.dueAnnouncements(new Date())) {
      let after = "";
      for (;;) {
        const recipients = await store.recipientsAfter(a.role, after, PAGE);
        if (recipients.length === 0) break;
        const made = await planMany(
          db,
          store,
          recipients.map((r) => r.user_id),
          {
            type: "announcement",
            sourceKey: `announcement:${a.id}`,
            title: a.title,
            body: a.body,
            link: "",
            attributes: { announcement_id: a.id },
            variables: { title: a.title, body: a.body },
          },
          new Date(),
          new Set(recipients.filter((r) => r.email).map((r) => r.user_id)),
        );
        deps.announce(made);
        deps.afterWrite();
        sent += made.length;
        after = recipients[recipients.length - 1]!.user_id;
      }
      await store.finishAnnouncement(a.id, new Date());
      log.info("announcement sent", { announcement_id: a.id, role: a.role ?? "everyone" });
    }
    return sent;
  };
}
