import type { Generated, Selectable } from "kysely";
import type { OutboxTable } from "../../platform/events/index.js";

// The identity schema as kysely sees it, and the row shapes read from it. Its own module so the
// store (which queries) and the model (which turns rows into messages) both depend on it rather
// than on each other.

/** The roles a person can hold; device and service belong to API keys. */
export type HumanRole = "admin" | "doctor" | "researcher" | "student";

/** The kinds of principal an API key can stand for. */
export type ApiKeyKind = "device" | "service";

export interface UserTable {
  id: string;
  email: string;
  username: string;
  password_hash: string;
  first_name: string;
  last_name: string;
  role: HumanRole;
  active: Generated<boolean>;
  email_verified: Generated<boolean>;
  failed_logins: Generated<number>;
  lockouts: Generated<number>;
  locked_until: Date | null;
  created_at: Date;
  updated_at: Date;
}

export interface SessionTable {
  id: string;
  user_id: string;
  created_at: Date;
  last_used_at: Date;
  expires_at: Date;
  revoked_at: Date | null;
  revoke_reason: string | null;
}

export interface RefreshTokenTable {
  token_hash: string;
  session_id: string;
  created_at: Date;
  rotated_at: Date | null;
}

export interface MfaTable {
  user_id: string;
  secret: string;
  created_at: Date;
  confirmed_at: Date | null;
  last_used_step: Generated<number>;
}

export interface BackupCodeTable {
  user_id: string;
  code_hash: string;
  used_at: Date | null;
}

export interface ApiKeyTable {
  id: string;
  name: string;
  kind: ApiKeyKind;
  key_hash: string;
  prefix: string;
  created_by: string;
  created_at: Date;
  last_used_at: Date | null;
  revoked_at: Date | null;
}

export type OneTimePurpose = "email_verification" | "password_reset" | "mfa_login";

export interface OneTimeTokenTable {
  /** Names the link in user.events; the token (its hash here) is replaced by IssueAccountLink. */
  id: Generated<string>;
  token_hash: string;
  user_id: string;
  purpose: OneTimePurpose;
  created_at: Date;
  expires_at: Date;
  used_at: Date | null;
}

export interface SigningKeyTable {
  kid: string;
  public_jwk: unknown;
  private_pkcs8: string;
  created_at: Date;
  retired_at: Date | null;
}

export interface AuditTable {
  id: Generated<number>;
  at: Date;
  event: string;
  user_id: string | null;
  actor: string | null;
  details: Record<string, string>;
}

export interface IdentityDB {
  users: UserTable;
  sessions: SessionTable;
  refresh_tokens: RefreshTokenTable;
  mfa: MfaTable;
  mfa_backup_codes: BackupCodeTable;
  api_keys: ApiKeyTable;
  one_time_tokens: OneTimeTokenTable;
  signing_keys: SigningKeyTable;
  audit_log: AuditTable;
  outbox: OutboxTable;
}

export type UserRow = Selectable<UserTable>;
export type SessionRow = Selectable<SessionTable>;
export type ApiKeyRow = Selectable<ApiKeyTable>;
export type MfaRow = Selectable<MfaTable>;
export type SigningKeyRow = Selectable<SigningKeyTable>;
export type OneTimeTokenRow = Selectable<OneTimeTokenTable>;
export type AuditRow = Selectable<AuditTable>;
