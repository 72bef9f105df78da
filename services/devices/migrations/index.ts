import type { Migration } from "kysely";
import * as m0001 from "./0001_devices.js";

/** In order; never edit or remove one that has shipped, add the next instead. */
export const migrations: Record<string, Migration> = {
  "0001_devices": m0001,
};
