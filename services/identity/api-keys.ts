import { randomUUID } from "node:crypto";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { callerOf } from "../../platform/grpc/caller.js";
import type { IdentityContext } from "./context.js";
import { accessToken } from "./issue-tokens.js";
import { apiKeyKind, toApiKey } from "./model.js";
import type { ApiKeyKind, ApiKeyRow } from "./tables.js";
import { ACCESS_TOKEN_TTL_SECONDS, hashToken, newOpaqueToken } from "./tokens.js";

export const API_KEY_PREFIX = "mmk_";

/**
 * How a key is stored, whoever makes it (CreateApiKey or the configured bootstrap keys): hashed,
 * with only enough of its start kept to recognise it in a list.
 */
export function apiKeyRecord(
  key: string,
  owner: { name: string; kind: ApiKeyKind; createdBy: string },
  at: Date,
): Omit<ApiKeyRow, "last_used_at" | "revoked_at"> {
  return {
    id: randomUUID(),
    name: owner.name,
    kind: owner.kind,
    key_hash: hashToken(key),
    prefix: key.slice(0, API_KEY_PREFIX.length + 6),
    created_by: owner.createdBy,
    created_at: at,
  };
}

/** What the audit log says about a key: who it is for, never the key. */
export const apiKeyDetails = (row: ApiKeyRow) => ({ api_key_id: row.id, name: row.name, kind: row.kind });

type Handlers = Pick<
  ServiceImpl<typeof IdentityService>,
  "createApiKey" | "listApiKeys" | "revokeApiKey" | "exchangeApiKey" | "issueDeviceApiKey" | "revokeDeviceApiKeys"
>;

/**
 * The service principal allowed to manage device keys. The contract admits every service to those
 * RPCs; only the devices service owns devices, so the others are refused here.
 */
export const DEVICE_KEY_ISSUER = "devices";

function deviceKeyIssuer(ctx: Parameters<typeof callerOf>[0]): string {
  const caller = callerOf(ctx).subject;
  if (caller !== DEVICE_KEY_ISSUER)
    throw new ConnectError(`only the ${DEVICE_KEY_ISSUER} service manages device keys`, Code.PermissionDenied);
  return caller;
}

export function apiKeyHandlers(identity: IdentityContext): Handlers {
  const { store, audit, now } = identity;
  return {
    async createApiKey(req, ctx) {
      const actor = callerOf(ctx).subject;
      const key = newOpaqueToken(API_KEY_PREFIX);
      const row = await store.insertApiKey(
        apiKeyRecord(key, { name: req.name, kind: apiKeyKind(req.kind), createdBy: actor }, now()),
      );
      await audit({ event: "api_key_created", actor, details: apiKeyDetails(row) });
      return { apiKey: toApiKey(row), key };
    },

    async listApiKeys(req) {
      return { apiKeys: (await store.apiKeys(req.includeRevoked)).map(toApiKey) };
    },

    async revokeApiKey(req, ctx) {
      const actor = callerOf(ctx).subject;
      const row = await store.apiKey(req.id);
      if (!row) throw new ConnectError(`API key ${req.id} does not exist`, Code.NotFound);
      if (await store.revokeApiKey(row.id, now())) {
        await audit({ event: "api_key_revoked", actor, details: apiKeyDetails(row) });
      }
      return {};
    },

    async issueDeviceApiKey(req, ctx) {
      const actor = deviceKeyIssuer(ctx);
      const key = newOpaqueToken(API_KEY_PREFIX);
      const row = await store.insertApiKey(
        apiKeyRecord(key, { name: req.deviceId, kind: "device", createdBy: actor }, now()),
      );
      await audit({ event: "api_key_created", actor, details: apiKeyDetails(row) });
      return { apiKey: toApiKey(row), key };
    },

    async revokeDeviceApiKeys(req, ctx) {
      const actor = deviceKeyIssuer(ctx);
      const revoked = await store.revokeApiKeysNamed(req.deviceId, now());
      if (revoked > 0)
        await audit({
          event: "api_key_revoked",
          actor,
          details: { name: req.deviceId, kind: "device", revoked: String(revoked) },
        });
      return { revoked };
    },

    async exchangeApiKey(req) {
      const invalid = () => new ConnectError("the API key is not valid", Code.Unauthenticated);
      if (!req.apiKey.startsWith(API_KEY_PREFIX)) throw invalid();
      const row = await store.useApiKey(hashToken(req.apiKey), now());
      if (!row) throw invalid();
      return {
        accessToken: await accessToken(identity, { sub: row.name, role: row.kind, kind: row.kind }),
        tokenType: "Bearer",
        expiresInSeconds: ACCESS_TOKEN_TTL_SECONDS,
      };
    },
  };
}
