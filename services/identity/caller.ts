import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextKey, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { Audience, Role } from "../../gen/medmesh/access/v1/access_pb.js";
import { policyOf } from "../../platform/grpc/access-policy.js";
import { principalKey, type Principal } from "../../platform/grpc/interceptors/access.js";
import type { SigningKeyRing } from "./keys.js";
import { roleFromName } from "./model.js";
import { verifyAccessToken } from "./tokens.js";

/**
 * Who is calling. The mesh's access interceptor will put the Principal into ctx.values under
 * principalKey once it verifies tokens itself; until then identity resolves its callers here,
 * from its own keys. Everything about that lives in this file, so switching over means passing
 * no `authenticate` to guard() — handlers read the caller the same way in both cases.
 */

export type Authentication = { ok: true; principal: Principal; sessionId?: string } | { ok: false; message: string };

/** Resolves the bearer token of a request; undefined when the request carries none. */
export type Authenticate = (header: Headers) => Promise<Authentication | undefined>;

/** The session of the caller's access token (the sid claim), when the caller is a user. */
const sessionKey = createContextKey<string | undefined>(undefined, { description: "identity session id" });

export function bearerToken(header: Headers): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header.get("authorization") ?? "");
  return m?.[1];
}

export function bearerAuthenticator(keys: SigningKeyRing, now: () => Date): Authenticate {
  let lastReload = 0;
  return async (header) => {
    const token = bearerToken(header);
    if (!token) return undefined;
    let result = verifyAccessToken(token, await keys.jwks(), { now: now() });
    // Another replica may have rotated a moment ago. Reading the keys again is bounded so that
    // tokens with invented kids cannot make every request a database query.
    if (!result.ok && result.reason === "unknown_key" && Date.now() - lastReload > 5_000) {
      lastReload = Date.now();
      await keys.reload();
      result = verifyAccessToken(token, await keys.jwks(), { now: now() });
    }
    if (!result.ok) return { ok: false, message: result.message };
    const c = result.claims;
    return { ok: true, principal: { subject: c.sub, role: roleFromName(c.role), kind: c.kind }, sessionId: c.sid };
  };
}

/**
 * Wraps every method of a ServiceImpl with the access policy the contract declares, the rule the
 * mesh's access interceptor applies: public methods admit anyone, the others a verified caller,
 * role-restricted ones only those roles. A method without a policy is refused.
 */
export function guard<S extends DescService>(service: S, impl: ServiceImpl<S>, authenticate?: Authenticate): ServiceImpl<S> {
  const out: Record<string, unknown> = {};
  for (const method of service.methods) {
    const handler = (impl as Record<string, (req: unknown, ctx: HandlerContext) => unknown>)[method.localName]!;
    const policy = policyOf(method);
    out[method.localName] = async (req: unknown, ctx: HandlerContext) => {
      if (!policy || policy.audience === Audience.UNSPECIFIED) {
        throw new ConnectError(`${service.typeName}/${method.name} declares no access policy and is not served`, Code.PermissionDenied);
      }
      let principal = ctx.values.get(principalKey);
      if (!principal && authenticate) {
        const auth = await authenticate(ctx.requestHeader);
        if (auth?.ok) {
          principal = auth.principal;
          ctx.values.set(principalKey, principal);
          ctx.values.set(sessionKey, auth.sessionId);
        } else if (auth && policy.audience !== Audience.PUBLIC) {
          throw new ConnectError(`the access token is not valid: ${auth.message}`, Code.Unauthenticated);
        }
      }
      if (policy.audience !== Audience.PUBLIC) {
        if (!principal) throw new ConnectError("sign in to call this method", Code.Unauthenticated);
        if (policy.audience === Audience.ROLES && !policy.roles.includes(principal.role)) {
          throw new ConnectError(`the ${Role[principal.role]?.toLowerCase() ?? "unknown"} role may not call ${method.name}`, Code.PermissionDenied);
        }
      }
      return handler.call(impl, req, ctx);
    };
  }
  return out as ServiceImpl<S>;
}

/** The verified caller of a method whose policy requires one. */
export function callerOf(ctx: HandlerContext): Principal {
  const p = ctx.values.get(principalKey);
  if (!p) throw new ConnectError("sign in to call this method", Code.Unauthenticated);
  return p;
}

/** The caller as a user (not a device or service), for methods about one's own account. */
export function userOf(ctx: HandlerContext): string {
  const p = callerOf(ctx);
  if (p.kind !== "user") throw new ConnectError(`a ${p.kind} has no account; this method is for users`, Code.PermissionDenied);
  return p.subject;
}

/**
 * The caller's session. When the mesh resolved the caller it carries no session, so the
 * bearer token is read again here (identity can always verify its own tokens).
 */
export async function sessionOf(ctx: HandlerContext, authenticate: Authenticate): Promise<string | undefined> {
  const known = ctx.values.get(sessionKey);
  if (known) return known;
  const auth = await authenticate(ctx.requestHeader);
  return auth?.ok && auth.principal.subject === callerOf(ctx).subject ? auth.sessionId : undefined;
}
