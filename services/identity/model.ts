import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Role } from "../../gen/medmesh/access/v1/access_pb.js";
import { enumNames } from "../../platform/grpc/enum-names.js";
import { roleNames } from "../../platform/grpc/interceptors/access.js";
import {
  ApiKeySchema,
  AuditEventSchema,
  PrincipalKind,
  SessionSchema,
  UserSchema,
  type ApiKey,
  type AuditEvent,
  type Session,
  type User,
} from "../../gen/medmesh/identity/v1/identity_pb.js";
import type { PrincipalKindName, RoleName } from "./tokens.js";
import type { ApiKeyKind, ApiKeyRow, AuditRow, SessionRow, UserRow } from "./tables.js";

// Roles and kinds are stored and put in tokens by their lower-case names, independent of proto numbering.
export const roleName = (role: Role): RoleName => roleNames.name(role) as RoleName;
export const roleFromName = (name: string): Role => roleNames.value(name);

const kinds = enumNames<PrincipalKind>(PrincipalKind, "PrincipalKind");

export const kindFromName = (name: PrincipalKindName): PrincipalKind => kinds.value(name);

export function apiKeyKind(kind: PrincipalKind): ApiKeyKind {
  if (kind === PrincipalKind.DEVICE || kind === PrincipalKind.SERVICE) return kinds.name(kind) as ApiKeyKind;
  throw new Error(`API keys are for devices and services, not ${PrincipalKind[kind]}`);
}

const ts = (d: Date | null | undefined) => (d ? timestampFromDate(new Date(d)) : undefined);

export function toUser(row: UserRow, mfaEnabled: boolean): User {
  return create(UserSchema, {
    id: row.id,
    email: row.email,
    username: row.username,
    firstName: row.first_name,
    lastName: row.last_name,
    role: roleFromName(row.role),
    active: row.active,
    emailVerified: row.email_verified,
    mfaEnabled,
    createTime: ts(row.created_at),
    updateTime: ts(row.updated_at),
  });
}

export function toSession(row: SessionRow, currentId: string | undefined): Session {
  return create(SessionSchema, {
    id: row.id,
    createTime: ts(row.created_at),
    lastUseTime: ts(row.last_used_at),
    expireTime: ts(row.expires_at),
    current: row.id === currentId,
  });
}

export function toApiKey(row: ApiKeyRow): ApiKey {
  return create(ApiKeySchema, {
    id: row.id,
    name: row.name,
    kind: kindFromName(row.kind),
    prefix: row.prefix,
    createdBy: row.created_by,
    createTime: ts(row.created_at),
    lastUseTime: ts(row.last_used_at),
    revokeTime: ts(row.revoked_at),
  });
}

export function toAuditEvent(row: AuditRow): AuditEvent {
  return create(AuditEventSchema, {
    id: BigInt(row.id),
    time: ts(row.at),
    event: row.event,
    userId: row.user_id ?? "",
    actor: row.actor ?? "",
    details: row.details,
  });
}
