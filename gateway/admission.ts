import type { IncomingHttpHeaders } from "node:http";
import { Audience, RateClass, type Policy } from "../gen/medmesh/access/v1/access_pb.js";
import type { RateLimiter } from "../platform/cache/rate-limiter.js";
import {
  declaredPolicy,
  permittedCaller,
  type Principal,
  type PrincipalResolver,
} from "../platform/grpc/interceptors/access.js";
import { callerBucket, drawTokens, refusal, type RateRules } from "../platform/grpc/interceptors/rate-limit.js";

/**
 * Whether a passed-through call may go on: the access policy and the rate class of its method,
 * decided from the request headers alone, by the same rules as the access and rate-limit
 * interceptors (whose decisions these call). The one rule those read from the message
 * (per-account buckets of credential calls) is why such calls are never passed through (see
 * passthrough-routes.ts).
 */

/** The request headers as the Headers a principal resolver reads (it only ever calls get). */
function headerView(headers: IncomingHttpHeaders): Headers {
  return {
    get: (key: string) => {
      const v = headers[key.toLowerCase()];
      return v === undefined ? null : Array.isArray(v) ? v.join(", ") : v;
    },
    has: (key: string) => headers[key.toLowerCase()] !== undefined,
  } as Headers;
}

/**
 * The caller admitted under `policy`, or the refusal as a ConnectError. `service` and `method`
 * spell the method as the interceptor's sentences do. Synchronous when there is nothing to
 * verify (a public method called without a token), which is most anonymous traffic: every
 * promise costs a round of async hooks while tracing is on.
 */
export function admit(
  policy: Policy | undefined,
  service: string,
  method: string,
  headers: IncomingHttpHeaders,
  resolve: PrincipalResolver,
): Principal | undefined | Promise<Principal | undefined> {
  const declared = declaredPolicy(policy, service, method);
  if (declared.audience === Audience.PUBLIC) {
    // No token names no one (as the bearer resolver has it). A stale or broken token must not
    // lock anyone out of a public method: it only fails to identify the caller.
    if (headers.authorization === undefined) return undefined;
    return resolve(headerView(headers)).catch(() => undefined);
  }
  return resolve(headerView(headers)).then((principal) => permittedCaller(declared, principal, method));
}

/**
 * Draws one token from the bucket of the method's rate class, keyed by the principal or, for
 * anonymous callers, the client's address; undefined when the class has no rule.
 */
export function takeRateToken(
  limiter: RateLimiter,
  rules: RateRules,
  rateClass: RateClass,
  principal: Principal | undefined,
  address: string | undefined,
): Promise<void> | undefined {
  const rule = rules[rateClass];
  if (!rule) return undefined;
  const key = callerBucket(rateClass, principal, address);
  if (limiter.takeNow) {
    // Decided at once: an admitted call spends no promise here (a refusal is rare enough to).
    const decision = limiter.takeNow(key, rule);
    return decision.allowed ? undefined : Promise.reject(refusal(rateClass, key, decision));
  }
  return drawTokens(limiter, rule, rateClass, [key]);
}
