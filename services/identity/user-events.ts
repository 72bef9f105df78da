import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  EmailVerificationRequestedSchema,
  MfaEnabledSchema,
  NewSignInSchema,
  PasswordResetRequestedSchema,
  RoleChangedSchema,
  UserRegisteredSchema,
} from "../../gen/medmesh/events/v1/user_events_pb.js";
import { contractEvent, type OutboxEvent } from "../../platform/events/index.js";
import { roleFromName } from "./model.js";
import type { UserRow } from "./tables.js";

// The user.events identity publishes, each written to the outbox in the transaction of the audit
// row that records the same fact (store.audit). They carry ids and facts only: a link's token
// stays in identity until the notifications service asks for it (IssueAccountLink).

const origin = (userId: string, at: Date) => ({ key: userId, source: "/medmesh/identity", time: at });

export const registeredEvent = (user: UserRow, at: Date): OutboxEvent =>
  contractEvent(
    UserRegisteredSchema,
    {
      userId: user.id,
      email: user.email,
      username: user.username,
      firstName: user.first_name,
      role: roleFromName(user.role),
      registerTime: timestampFromDate(at),
    },
    origin(user.id, at),
  );

export function linkRequestedEvent(
  purpose: "email_verification" | "password_reset",
  userId: string,
  linkId: string,
  expiresAt: Date,
  at: Date,
): OutboxEvent {
  const data = {
    userId,
    linkId,
    expireTime: timestampFromDate(expiresAt),
    requestTime: timestampFromDate(at),
  };
  return purpose === "email_verification"
    ? contractEvent(EmailVerificationRequestedSchema, data, origin(userId, at))
    : contractEvent(PasswordResetRequestedSchema, data, origin(userId, at));
}

export const signedInEvent = (userId: string, sessionId: string, clientAddress: string, at: Date): OutboxEvent =>
  contractEvent(
    NewSignInSchema,
    { userId, sessionId, clientAddress, signInTime: timestampFromDate(at) },
    origin(userId, at),
  );

export const mfaEnabledEvent = (userId: string, at: Date): OutboxEvent =>
  contractEvent(MfaEnabledSchema, { userId, changeTime: timestampFromDate(at) }, origin(userId, at));

export const roleChangedEvent = (userId: string, from: string, to: string, by: string, at: Date): OutboxEvent =>
  contractEvent(
    RoleChangedSchema,
    {
      userId,
      oldRole: roleFromName(from),
      newRole: roleFromName(to),
      changedBy: by,
      changeTime: timestampFromDate(at),
    },
    origin(userId, at),
  );
