import { sql, type Kysely } from "kysely";

/** StartUpload counts the caller's open uploads each time; this keeps that to their own rows. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createIndex("upload_session_owner_open_idx")
    .on("upload_session")
    .column("owner")
    .where(sql.ref("state"), "=", "open")
    .execute();
}
