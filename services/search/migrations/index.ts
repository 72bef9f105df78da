import type { Migration } from "kysely";
import * as m0001 from "./0001_inbox.js";
import * as m0002 from "./0002_outbox.js";
import * as m0003 from "./0003_outbox_claims.js";
import * as m0004 from "./0004_index.js";
import * as m0005 from "./0005_search_stats.js";
import * as m0006 from "./0006_title_tsv.js";

/** In order; never edit or remove one that has shipped, add the next instead. */
export const migrations: Record<string, Migration> = {
  "0001_inbox": m0001,
  "0002_outbox": m0002,
  "0003_outbox_claims": m0003,
  "0004_index": m0004,
  "0005_search_stats": m0005,
  "0006_title_tsv": m0006,
};
