import type { Migration } from "kysely";
import * as m0001 from "./0001_inbox.js";
import * as m0002 from "./0002_notifications.js";
import * as m0003 from "./0003_recipient_sync.js";
import * as m0004 from "./0004_push_sent.js";

/** In order; never edit or remove one that has shipped, add the next instead. */
export const migrations: Record<string, Migration> = {
  "0001_inbox": m0001,
  "0002_notifications": m0002,
  "0003_recipient_sync": m0003,
  "0004_push_sent": m0004,
};
