import { fromBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { Kysely } from "kysely";
import { FailureReason, type DocumentService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import {
  DocumentFailedSchema,
  DocumentIndexedSchema,
  DocumentProcessedSchema,
} from "../../gen/medmesh/events/v1/document_events_pb.js";
import {
  EmailVerificationRequestedSchema,
  MfaDisabledSchema,
  MfaEnabledSchema,
  NewSignInSchema,
  PasswordResetRequestedSchema,
  RoleChangedSchema,
  UserRegisteredSchema,
} from "../../gen/medmesh/events/v1/user_events_pb.js";
import type { ServiceToken } from "../../platform/auth/service-token.js";
import { isEventOf, PoisonMessageError, type EventEnvelope } from "../../platform/events/index.js";
import { enumNames } from "../../platform/grpc/enum-names.js";
import { roleNames } from "../../platform/grpc/interceptors/access.js";
import type { Intent } from "./planner.js";
import type { NotificationStore } from "./store.js";
import type { NotificationsDB } from "./tables.js";

const DOCUMENT_EVENTS = [DocumentProcessedSchema, DocumentFailedSchema, DocumentIndexedSchema];
const USER_EVENTS = [
  UserRegisteredSchema,
  EmailVerificationRequestedSchema,
  PasswordResetRequestedSchema,
  NewSignInSchema,
  MfaEnabledSchema,
  MfaDisabledSchema,
  RoleChangedSchema,
];
const failureReasons = enumNames<FailureReason>(FailureReason, "FailureReason");

function decode<D extends DescMessage>(schema: D, event: EventEnvelope): MessageShape<D> {
  try {
    return fromBinary(schema, event.payload);
  } catch (err) {
    throw new PoisonMessageError(`not a ${schema.typeName}: ${(err as Error).message}`);
  }
}

const when = (t: Timestamp | undefined) =>
  (t ? timestampDate(t) : new Date()).toISOString().replace("T", " ").slice(0, 16) + " UTC";
const roleName = (r: number) => roleNames.label(r as never, "unknown");

export interface EventDeps {
  store: NotificationStore;
  documents: Client<typeof DocumentService>;
  token: ServiceToken;
  /** The console's address, for links in messages. */
  publicUrl: string;
}

/** The document a pipeline event is about: its title and uploader, by RPC to documents. */
interface DocumentFacts {
  title: string;
  uploadedBy: string;
}

/**
 * Document events → the uploader. The events name only the document, so `prepare` asks documents
 * for its title and uploader (outside any transaction; a deleted document notifies nobody).
 */
export function documentNotifier(deps: EventDeps) {
  const { documents, token, publicUrl } = deps;
  return {
    handles: (e: EventEnvelope) => DOCUMENT_EVENTS.some((s) => isEventOf(e, s)),
    async prepare(e: EventEnvelope): Promise<DocumentFacts | undefined> {
      const id = e.key;
      try {
        const doc = (await token.call((headers) => documents.getDocument({ id }, { headers }))).document;
        return doc ? { title: doc.title || "Untitled document", uploadedBy: doc.uploadedBy } : undefined;
      } catch (err) {
        if (err instanceof ConnectError && err.code === Code.NotFound) return undefined;
        throw err;
      }
    },
    intent(e: EventEnvelope, doc: DocumentFacts | undefined): Intent | undefined {
      if (!doc || !doc.uploadedBy) return undefined;
      const documentId = e.key;
      const link = `/documents/${documentId}`;
      const base = {
        userId: doc.uploadedBy,
        sourceKey: `event:${e.id}`,
        link,
        attributes: { document_id: documentId },
        variables: { document_title: doc.title, document_url: `${publicUrl}/#${link}` },
      };
      if (isEventOf(e, DocumentProcessedSchema)) {
        const p = decode(DocumentProcessedSchema, e);
        return {
          ...base,
          type: "document_processed",
          title: "Document processed",
          body: `${doc.title} has been processed (${p.pages} pages).`,
          variables: { ...base.variables, pages: String(p.pages) },
        };
      }
      if (isEventOf(e, DocumentFailedSchema)) {
        const f = decode(DocumentFailedSchema, e);
        const reason = f.message || failureReasons.label(f.reason, "unknown reason").replace(/_/g, " ");
        return {
          ...base,
          type: "document_failed",
          title: "Processing failed",
          body: `${doc.title} could not be processed: ${reason}.`,
          variables: { ...base.variables, reason },
        };
      }
      return {
        ...base,
        type: "document_indexed",
        title: "Document searchable",
        body: `${doc.title} can now be found by search.`,
      };
    },
  };
}

/**
 * user.events → the user. Also keeps the recipient list (address, name, role) that emails and
 * announcements to a role need, in the same transaction.
 */
export function userNotifier(deps: EventDeps) {
  const { store, publicUrl } = deps;
  return {
    handles: (e: EventEnvelope) => USER_EVENTS.some((s) => isEventOf(e, s)),
    /** Recipient bookkeeping, then what to tell the user (undefined: nothing). */
    async apply(e: EventEnvelope, trx: Kysely<NotificationsDB>): Promise<Intent | undefined> {
      const sourceKey = `event:${e.id}`;
      const none = { link: "", attributes: {}, variables: {} };
      if (isEventOf(e, UserRegisteredSchema)) {
        const u = decode(UserRegisteredSchema, e);
        await store.upsertRecipient(trx, {
          userId: u.userId,
          role: roleName(u.role),
          email: u.email,
          firstName: u.firstName,
        });
        return {
          ...none,
          type: "welcome",
          userId: u.userId,
          sourceKey,
          title: "Welcome to medmesh",
          body: `Your account ${u.username} is ready.`,
          variables: { username: u.username, app_url: `${publicUrl}/` },
        };
      }
      if (isEventOf(e, EmailVerificationRequestedSchema) || isEventOf(e, PasswordResetRequestedSchema)) {
        const reset = isEventOf(e, PasswordResetRequestedSchema);
        const r = decode(reset ? PasswordResetRequestedSchema : EmailVerificationRequestedSchema, e);
        return {
          ...none,
          type: reset ? "password_reset" : "email_verification",
          userId: r.userId,
          sourceKey,
          title: reset ? "Password reset requested" : "Confirm your email address",
          body: reset ? "A password reset link was sent by email." : "A confirmation link was sent by email.",
          linkId: r.linkId,
          variables: { expires: r.expireTime ? `until ${when(r.expireTime)}` : "for a short time" },
        };
      }
      if (isEventOf(e, NewSignInSchema)) {
        const s = decode(NewSignInSchema, e);
        const address = s.clientAddress || "an unknown address";
        return {
          ...none,
          type: "new_sign_in",
          userId: s.userId,
          sourceKey,
          title: "New sign-in",
          body: `Signed in at ${when(s.signInTime)} from ${address}.`,
          attributes: { session_id: s.sessionId },
          variables: { time: when(s.signInTime), address },
        };
      }
      if (isEventOf(e, MfaEnabledSchema) || isEventOf(e, MfaDisabledSchema)) {
        const on = isEventOf(e, MfaEnabledSchema);
        const m = decode(on ? MfaEnabledSchema : MfaDisabledSchema, e);
        const change = on ? "turned on" : "turned off";
        return {
          ...none,
          type: "mfa_changed",
          userId: m.userId,
          sourceKey,
          title: `Two-step sign-in ${change}`,
          body: `Two-step sign-in was ${change} at ${when(m.changeTime)}.`,
          variables: { change, time: when(m.changeTime) },
        };
      }
      const r = decode(RoleChangedSchema, e);
      await store.upsertRecipient(trx, { userId: r.userId, role: roleName(r.newRole) });
      return {
        ...none,
        type: "role_changed",
        userId: r.userId,
        sourceKey,
        title: "Your role changed",
        body: `Your role is now ${roleName(r.newRole)} (was ${roleName(r.oldRole)}).`,
        variables: { old_role: roleName(r.oldRole), new_role: roleName(r.newRole) },
      };
    },
  };
}
