import { createContextKey, type Interceptor } from "@connectrpc/connect";
import { CLIENT_ADDRESS_HEADER, checkVouchedAddress, type EdgeSecrets } from "../../auth/client-address.js";
import { logger } from "../../telemetry/logger.js";

/**
 * The address of the client a call comes from when that is not the connection's peer: at the
 * gateway, the client behind a trusted proxy; at a service, the client the gateway vouched
 * for. Unset means the peer (peerKey) is the client.
 */
export const clientAddressKey = createContextKey<string | undefined>(undefined, { description: "client address" });

/**
 * A service's side of the gateway's statement (platform/auth/client-address.ts): a genuine one
 * makes its address the call's client address; anything else (no secret configured, a bad
 * signature, another method's statement, an old one) is ignored and the caller stays known by
 * its peer address. Never an error for the caller: a direct caller simply has no gateway
 * vouching for it. Runs before rate limiting, which keys anonymous callers by this address.
 */
export function vouchedAddressInterceptor(secrets: EdgeSecrets | undefined, now: () => number = Date.now): Interceptor {
  const log = logger.child({ component: "client-address" });
  return (next) => async (req) => {
    const statement = req.header.get(CLIENT_ADDRESS_HEADER);
    if (statement === null) return next(req);
    // Handlers learn the client from the context, never from a header they might not check.
    req.header.delete(CLIENT_ADDRESS_HEADER);
    const path = `/${req.service.typeName}/${req.method.name}`;
    const checked = secrets
      ? checkVouchedAddress(secrets, statement, path, now())
      : ({ ok: false, reason: "no_secret_configured" } as const);
    if (checked.ok) req.contextValues.set(clientAddressKey, checked.address);
    else log.debug("client address statement ignored", { rpc: path, reason: checked.reason });
    return next(req);
  };
}
