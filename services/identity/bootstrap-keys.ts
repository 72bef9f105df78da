import { isUniqueViolation } from "../../platform/db/errors.js";
import { logger } from "../../platform/telemetry/logger.js";
import { API_KEY_PREFIX, apiKeyDetails, apiKeyRecord } from "./api-keys.js";
import type { IdentityStore } from "./store.js";
import { hashToken } from "./tokens.js";

const log = logger.child({ component: "identity" });

export interface BootstrapKey {
  /** The service the key acts as: the token's `sub`. */
  name: string;
  key: string;
}

/** Who the audit log and `created_by` name for keys that come from configuration. */
export const BOOTSTRAP_CREATOR = "bootstrap";

// The same rule CreateApiKey's contract applies to names.
const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
// 43 base64url characters carry 256 bits, what CreateApiKey generates.
const SECRET = /^[A-Za-z0-9_-]{43,200}$/;

/**
 * Reads `name=key[,name=key]`. Messages name the entry by its service name or position and never
 * quote a key: configuration errors end up in logs.
 */
export function parseBootstrapKeys(raw: string): BootstrapKey[] {
  const out: BootstrapKey[] = [];
  const entries = raw
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  entries.forEach((entry, i) => {
    const eq = entry.indexOf("=");
    if (eq < 0) throw new Error(`entry ${i + 1} is not name=key`);
    const name = entry.slice(0, eq).trim();
    const key = entry.slice(eq + 1).trim();
    if (!NAME.test(name)) {
      throw new Error(
        `entry ${i + 1}: the name must be 1 to 64 lower-case letters, digits, dots, dashes or underscores, starting with a letter or digit`,
      );
    }
    if (!key.startsWith(API_KEY_PREFIX) || !SECRET.test(key.slice(API_KEY_PREFIX.length))) {
      throw new Error(
        `the key for ${name} must be ${API_KEY_PREFIX} followed by at least 43 base64url characters (256 random bits), ` +
          `e.g. from: node -e "console.log('${API_KEY_PREFIX}' + require('crypto').randomBytes(32).toString('base64url'))"`,
      );
    }
    // Length alone lets "mmk_aaaa…" through; a random 43-character key has about 30 distinct characters.
    if (new Set(key.slice(API_KEY_PREFIX.length)).size < 16)
      throw new Error(`the key for ${name} is not random enough`);
    if (out.some((k) => k.name === name)) throw new Error(`${name} is listed twice`);
    if (out.some((k) => k.key === key)) throw new Error(`${name} has the same key as another entry`);
    out.push({ name, key });
  });
  return out;
}

/**
 * Makes sure each configured service key exists and is live, stored exactly as CreateApiKey
 * stores keys (hashed, kind service), so a worker given the same secret can exchange it. Runs at
 * every start and changes nothing when the keys are already there. A new secret for a name
 * retires that name's earlier configured key: changing the setting is how a key is rotated. A key
 * an admin revoked stays revoked; it is reported, not revived.
 */
export async function ensureBootstrapKeys(store: IdentityStore, keys: BootstrapKey[], now: Date): Promise<void> {
  for (const { name, key } of keys) {
    const hash = hashToken(key);
    // The usual case, every restart: the key is there and nothing is written.
    const existing = await store.apiKeyByHash(hash);
    if (existing) {
      if (existing.revoked_at)
        log.warn("a configured API key was revoked; it stays revoked until it is replaced", {
          name,
          api_key_id: existing.id,
        });
      else if (existing.name !== name || existing.kind !== "service")
        log.warn("a configured API key belongs to another principal; left as it is", { name, api_key_id: existing.id });
      continue;
    }
    const created = await store
      .transaction(async (tx) => {
        const row = await tx.insertApiKey(
          apiKeyRecord(key, { name, kind: "service", createdBy: BOOTSTRAP_CREATOR }, now),
        );
        const replaced = await tx.revokeConfiguredApiKeys(name, BOOTSTRAP_CREATOR, row.id, now);
        await tx.audit(
          {
            event: "api_key_created",
            actor: BOOTSTRAP_CREATOR,
            details: { ...apiKeyDetails(row), replaced: String(replaced) },
          },
          now,
        );
        return true;
      })
      .catch((err: unknown) => {
        // Another replica starting at the same moment inserted it first.
        if (isUniqueViolation(err)) return false;
        throw err;
      });
    if (created) log.info("created a service API key from configuration", { name });
  }
}
