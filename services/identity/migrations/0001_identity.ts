import { sql, type Kysely } from "kysely";

// Every timestamp is written by the service from its own clock (not now()), so expiry checks
// and the rows they compare against use one time source.
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("users")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("email", "text", (c) => c.notNull())
    .addColumn("username", "text", (c) => c.notNull())
    .addColumn("password_hash", "text", (c) => c.notNull())
    .addColumn("first_name", "text", (c) => c.notNull())
    .addColumn("last_name", "text", (c) => c.notNull())
    .addColumn("role", "text", (c) => c.notNull().check(sql`role in ('admin', 'doctor', 'researcher', 'student')`))
    .addColumn("active", "boolean", (c) => c.notNull().defaultTo(true))
    .addColumn("email_verified", "boolean", (c) => c.notNull().defaultTo(false))
    // Lockout: failures since the last success or lock, locks since the last success, and until when.
    .addColumn("failed_logins", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("lockouts", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("locked_until", "timestamptz")
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("updated_at", "timestamptz", (c) => c.notNull())
    .execute();
  // Addresses and usernames are unique whatever their case; the spelling the user chose is kept.
  await db.schema
    .createIndex("users_email_key")
    .on("users")
    .unique()
    .expression(sql`lower(email)`)
    .execute();
  await db.schema
    .createIndex("users_username_key")
    .on("users")
    .unique()
    .expression(sql`lower(username)`)
    .execute();

  // A session is one refresh-token family: every token it ever issued points back to it.
  await db.schema
    .createTable("sessions")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("user_id", "uuid", (c) => c.notNull().references("users.id").onDelete("cascade"))
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("last_used_at", "timestamptz", (c) => c.notNull())
    .addColumn("expires_at", "timestamptz", (c) => c.notNull())
    .addColumn("revoked_at", "timestamptz")
    .addColumn("revoke_reason", "text")
    .execute();
  await db.schema.createIndex("sessions_user_idx").on("sessions").columns(["user_id", "created_at"]).execute();

  await db.schema
    .createTable("refresh_tokens")
    .addColumn("token_hash", "text", (c) => c.primaryKey())
    .addColumn("session_id", "uuid", (c) => c.notNull().references("sessions.id").onDelete("cascade"))
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    // Set when traded for the next one; presenting it again afterwards is reuse.
    .addColumn("rotated_at", "timestamptz")
    .execute();
  await db.schema.createIndex("refresh_tokens_session_idx").on("refresh_tokens").column("session_id").execute();

  // The TOTP secret must be readable to compute codes, so it is stored as is (see README).
  await db.schema
    .createTable("mfa")
    .addColumn("user_id", "uuid", (c) => c.primaryKey().references("users.id").onDelete("cascade"))
    .addColumn("secret", "text", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("confirmed_at", "timestamptz")
    // The newest time step accepted; codes of that step or older are refused (no replay).
    .addColumn("last_used_step", "bigint", (c) => c.notNull().defaultTo(-1))
    .execute();

  await db.schema
    .createTable("mfa_backup_codes")
    .addColumn("user_id", "uuid", (c) => c.notNull().references("users.id").onDelete("cascade"))
    .addColumn("code_hash", "text", (c) => c.notNull())
    .addColumn("used_at", "timestamptz")
    .addPrimaryKeyConstraint("mfa_backup_codes_pkey", ["user_id", "code_hash"])
    .execute();

  await db.schema
    .createTable("api_keys")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("name", "text", (c) => c.notNull())
    .addColumn("kind", "text", (c) => c.notNull().check(sql`kind in ('device', 'service')`))
    .addColumn("key_hash", "text", (c) => c.notNull().unique())
    .addColumn("prefix", "text", (c) => c.notNull())
    .addColumn("created_by", "text", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("last_used_at", "timestamptz")
    .addColumn("revoked_at", "timestamptz")
    .execute();

  // Email verification links, password reset links and MFA login challenges: single use, expiring.
  await db.schema
    .createTable("one_time_tokens")
    .addColumn("token_hash", "text", (c) => c.primaryKey())
    .addColumn("user_id", "uuid", (c) => c.notNull().references("users.id").onDelete("cascade"))
    .addColumn("purpose", "text", (c) =>
      c.notNull().check(sql`purpose in ('email_verification', 'password_reset', 'mfa_login')`),
    )
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("expires_at", "timestamptz", (c) => c.notNull())
    .addColumn("used_at", "timestamptz")
    .execute();
  await db.schema
    .createIndex("one_time_tokens_user_idx")
    .on("one_time_tokens")
    .columns(["user_id", "purpose"])
    .execute();

  await db.schema
    .createTable("signing_keys")
    .addColumn("kid", "text", (c) => c.primaryKey())
    .addColumn("public_jwk", "jsonb", (c) => c.notNull())
    .addColumn("private_pkcs8", "text", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    // Set when a newer key takes over; the key stays published until its last token has expired.
    .addColumn("retired_at", "timestamptz")
    .execute();

  await db.schema
    .createTable("audit_log")
    .addColumn("id", "bigserial", (c) => c.primaryKey())
    .addColumn("at", "timestamptz", (c) => c.notNull())
    .addColumn("event", "text", (c) => c.notNull())
    .addColumn("user_id", "uuid")
    .addColumn("actor", "text")
    .addColumn("details", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .execute();
  await db.schema.createIndex("audit_log_user_idx").on("audit_log").columns(["user_id", "id"]).execute();
}
