import type { Migration } from "kysely";
import * as m0001 from "./0001_documents.js";
import * as m0002 from "./0002_versions.js";
import * as m0003 from "./0003_outbox.js";
import * as m0004 from "./0004_processing.js";
import * as m0005 from "./0005_upload_sessions.js";
import * as m0006 from "./0006_outbox_claims.js";
import * as m0007 from "./0007_processing_redrive.js";
import * as m0008 from "./0008_upload_owner.js";

/** In order; never edit or remove one that has shipped, add the next instead. */
export const migrations: Record<string, Migration> = {
  "0001_documents": m0001,
  "0002_versions": m0002,
  "0003_outbox": m0003,
  "0004_processing": m0004,
  "0005_upload_sessions": m0005,
  "0006_outbox_claims": m0006,
  "0007_processing_redrive": m0007,
  "0008_upload_owner": m0008,
};
