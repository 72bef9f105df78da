import { Code, ConnectError } from "@connectrpc/connect";
import { roleNames, type Principal, type PrincipalResolver } from "../grpc/interceptors/access.js";
import { verifyAccessToken, type Jwks } from "./access-token.js";
import type { KeySet } from "./key-set.js";
import { verifiedTokens } from "./verified-tokens.js";

const CLOCK_TOLERANCE_SECONDS = 5;

/**
 * The caller behind `authorization: Bearer <access token>`, verified locally against identity's
 * published keys. No header means an anonymous caller (the policy decides whether that is
 * enough); a header that does not verify is an error, so on any method that needs a caller a
 * broken or forged token is refused rather than downgraded to anonymous.
 */
export function bearerPrincipalResolver(
  keys: KeySet,
  now: () => number = Date.now,
  opts: { maxCachedTokens?: number } = {},
): PrincipalResolver {
  // Every call of a signed-in client carries the same token for its 15 minutes; checking the
  // signature once is enough (see verified-tokens.ts for what a cached answer still checks).
  const verified = verifiedTokens<Principal>({
    maxEntries: opts.maxCachedTokens ?? 10_000,
    clockToleranceSeconds: CLOCK_TOLERANCE_SECONDS,
  });
  const resolve: PrincipalResolver = async (header) => {
    const auth = header.get("authorization");
    if (auth === null) return undefined;
    const m = /^Bearer ([^\s]+)$/i.exec(auth.trim());
    if (!m) throw new ConnectError("the authorization header must be 'Bearer <access token>'", Code.Unauthenticated);
    const token = m[1]!;
    let jwks: Jwks;
    try {
      jwks = await keys.current();
    } catch {
      throw new ConnectError("tokens cannot be checked right now; try again shortly", Code.Unavailable);
    }
    const known = verified.get(token, jwks, Math.floor(now() / 1000));
    if (known) return known;
    let result = verifyAccessToken(token, jwks, { now: now(), clockToleranceSeconds: CLOCK_TOLERANCE_SECONDS });
    if (!result.ok && result.reason === "unknown_key") {
      // A key identity started signing with after our last fetch.
      const fresh = await keys.refresh().catch(() => jwks);
      result = verifyAccessToken(token, fresh, { now: now(), clockToleranceSeconds: CLOCK_TOLERANCE_SECONDS });
      jwks = fresh;
    }
    if (!result.ok) throw new ConnectError(`invalid access token: ${result.message}`, Code.Unauthenticated);
    const c = result.claims;
    const principal: Principal = Object.freeze({
      subject: c.sub,
      role: roleNames.value(c.role),
      kind: c.kind,
      ...(c.sid ? { sessionId: c.sid } : {}),
    });
    const signer = jwks.keys.find((k) => k.kid === result.kid);
    if (signer) verified.remember(token, principal, signer, c.exp);
    return principal;
  };
  // The common call: a well-formed header with a token checked before, under keys already held.
  // Answered without a promise; anything else (no header, odd spacing, a new token) goes the long way.
  resolve.known = (header) => {
    const auth = header.get("authorization");
    if (auth === null || !auth.startsWith("Bearer ")) return undefined;
    const jwks = keys.held?.();
    return jwks && verified.get(auth.slice(7), jwks, Math.floor(now() / 1000));
  };
  return resolve;
}
