import type { Migration } from "kysely";
import * as m0001 from "./0001_identity.js";
import * as m0002 from "./0002_user_events.js";

/** In order; never edit or remove one that has shipped, add the next instead. */
export const migrations: Record<string, Migration> = {
  "0001_identity": m0001,
  "0002_user_events": m0002,
};
