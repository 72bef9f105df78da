import type { Migration } from "kysely";
import * as m0001 from "./0001_identity.js";

/** In order; never edit or remove one that has shipped, add the next instead. */
export const migrations: Record<string, Migration> = {
  "0001_identity": m0001,
};
