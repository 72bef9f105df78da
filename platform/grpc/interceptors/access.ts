import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import { Audience, Role, type Policy } from "../../../gen/medmesh/access/v1/access_pb.js";
import { policyOf } from "../access-policy.js";

import { enumNames } from "../enum-names.js";
import { requestHeaderValue } from "../handler-context.js";

/** Roles by their stored lower-case names, as tokens and the identity database carry them. */
export const roleNames = enumNames<Role>(Role, "Role");

export interface Principal {
  /** User id, device id or service name. */
  subject: string;
  role: Role;
  kind: "user" | "device" | "service";
  /** The sign-in session a user's token belongs to. */
  sessionId?: string;
}

/** Handlers read the authenticated caller from here. */
export const principalKey = createContextKey<Principal | undefined>(undefined, { description: "medmesh principal" });
export const policyKey = createContextKey<Policy | undefined>(undefined, { description: "medmesh access policy" });

/**
 * Resolves the caller from request headers; identity provides the real one (JWT / API key).
 * Resolvers only look headers up by name: a call of the mesh's adapter hands over a getter on the
 * headers node parsed, because converting them all to Fetch Headers on every call was about 4% of
 * a cached GetDeviceState's CPU in the devices process.
 */
export type PrincipalResolver = ((header: Pick<Headers, "get">) => Promise<Principal | undefined>) & {
  /**
   * The caller, when it is known without waiting (a token verified before); undefined means ask
   * the resolver itself. Must never answer a caller the resolver would not.
   */
  known?: (header: Pick<Headers, "get">) => Principal | undefined;
};

/** A request's headers by name, read from node's parsed headers for a call of the mesh's adapter. */
const headerGetter = (req: { header: Headers }): Pick<Headers, "get"> => ({
  get: (name) => requestHeaderValue(req, name),
});

/** The method's policy, or the refusal of a method that declares none (`service`/`method` name it). */
export function declaredPolicy(policy: Policy | undefined, service: string, method: string): Policy {
  if (!policy || policy.audience === Audience.UNSPECIFIED) {
    throw new ConnectError(`${service}/${method} declares no access policy and is not served`, Code.PermissionDenied);
  }
  return policy;
}

/**
 * The caller of a method that is not public, or its refusal: no one signed in, or a role the
 * policy does not name. Shared with the gateway's pass-through, which decides from the headers.
 */
export function permittedCaller(policy: Policy, principal: Principal | undefined, method: string): Principal {
  if (!principal) throw new ConnectError("sign in to call this method", Code.Unauthenticated);
  if (policy.audience === Audience.ROLES && !policy.roles.includes(principal.role)) {
    throw new ConnectError(`the ${roleNames.label(principal.role)} role may not call ${method}`, Code.PermissionDenied);
  }
  return principal;
}

/**
 * Enforces the access option of the contract. Every method must declare one: a method without
 * a policy is refused outright, so forgetting the annotation fails closed. Every mesh server
 * passes a resolver (bearer tokens, platform/auth); a server built without one (the test-only
 * conformance service) applies only that first check.
 */
export function accessInterceptor(resolvePrincipal?: PrincipalResolver): Interceptor {
  const admit = (req: Parameters<Parameters<Interceptor>[0]>[0]): Policy => {
    const policy = declaredPolicy(policyOf(req.method), req.service.typeName, req.method.name);
    req.contextValues.set(policyKey, policy);
    return policy;
  };
  if (!resolvePrincipal) {
    // Only the policy check: no await, so no extra promise on every call.
    return (next) => (req) => {
      try {
        admit(req);
      } catch (err) {
        return Promise.reject(err);
      }
      return next(req);
    };
  }
  const resolveSlowly = async (
    next: Parameters<Interceptor>[0],
    req: Parameters<Parameters<Interceptor>[0]>[0],
    policy: Policy,
  ) => {
    if (policy.audience === Audience.PUBLIC) {
      // A stale or broken token must not lock anyone out of signing in or refreshing: on a public
      // method it only fails to identify the caller.
      req.contextValues.set(principalKey, await resolvePrincipal(headerGetter(req)).catch(() => undefined));
      return next(req);
    }
    const principal = await resolvePrincipal(headerGetter(req));
    req.contextValues.set(principalKey, principal);
    permittedCaller(policy, principal, req.method.name);
    return next(req);
  };
  const known = resolvePrincipal.known;
  return (next) => (req) => {
    let policy: Policy;
    let principal: Principal | undefined;
    try {
      policy = admit(req);
      principal = known?.(headerGetter(req));
      if (principal === undefined) return resolveSlowly(next, req, policy);
      req.contextValues.set(principalKey, principal);
      if (policy.audience !== Audience.PUBLIC) permittedCaller(policy, principal, req.method.name);
    } catch (err) {
      return Promise.reject(err);
    }
    return next(req);
  };
}
