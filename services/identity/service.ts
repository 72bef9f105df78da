import type { ServiceImpl } from "@connectrpc/connect";
import type { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { accountLinkHandlers } from "./account-links.js";
import { accountHandlers } from "./accounts.js";
import { adminHandlers } from "./admin.js";
import { apiKeyHandlers } from "./api-keys.js";
import { identityContext, type IdentityOptions } from "./context.js";
import { mfaHandlers } from "./mfa.js";
import { sessionHandlers } from "./sessions.js";
import { signingKeyHandlers } from "./signing-keys.js";

/** Identity's RPCs, one group per concern, each given the same context. */
export function identityService(opts: IdentityOptions): ServiceImpl<typeof IdentityService> {
  const identity = identityContext(opts);
  return {
    ...accountHandlers(identity),
    ...accountLinkHandlers(identity),
    ...sessionHandlers(identity),
    ...mfaHandlers(identity),
    ...apiKeyHandlers(identity),
    ...signingKeyHandlers(identity),
    ...adminHandlers(identity),
  };
}
