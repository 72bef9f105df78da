import type { IncomingHttpHeaders } from "node:http";
import { Code, ConnectError } from "@connectrpc/connect";
import { Audience, RateClass, type Policy } from "../gen/medmesh/access/v1/access_pb.js";
import type { RateLimiter } from "../platform/cache/rate-limiter.js";
import { resourceExhausted } from "../platform/grpc/errors.js";
import { enumNames } from "../platform/grpc/enum-names.js";
import { roleNames, type Principal, type PrincipalResolver } from "../platform/grpc/interceptors/access.js";
import type { RateRules } from "../platform/grpc/interceptors/rate-limit.js";
import { logger } from "../platform/telemetry/logger.js";

/**
 * Whether a passed-through call may go on: the access policy and the rate class of its method,
 * decided from the request headers alone. The same rules and sentences as the access and
 * rate-limit interceptors, which decide for calls the gateway decodes; the one rule those read
 * from the message (per-account buckets of credential calls) is why such calls are never passed
 * through (see passthrough-routes.ts).
 */

const rateClassNames = enumNames<RateClass>(RateClass, "RateClass");
const log = logger.child({ component: "rate-limit" });

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
  if (!policy || policy.audience === Audience.UNSPECIFIED) {
    throw new ConnectError(`${service}/${method} declares no access policy and is not served`, Code.PermissionDenied);
  }
  if (policy.audience === Audience.PUBLIC) {
    // No token names no one (as the bearer resolver has it). A stale or broken token must not
    // lock anyone out of a public method: it only fails to identify the caller.
    if (headers.authorization === undefined) return undefined;
    return resolve(headerView(headers)).catch(() => undefined);
  }
  return resolve(headerView(headers)).then((principal) => {
    if (!principal) throw new ConnectError("sign in to call this method", Code.Unauthenticated);
    if (policy.audience === Audience.ROLES && !policy.roles.includes(principal.role)) {
      throw new ConnectError(
        `the ${roleNames.label(principal.role)} role may not call ${method}`,
        Code.PermissionDenied,
      );
    }
    return principal;
  });
}

/**
 * Draws one token from the bucket of the method's rate class, keyed by the principal or, for
 * anonymous callers, the client's address. A limiter that cannot answer lets the call through:
 * credential calls, which fail closed, are not passed through.
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
  const name = rateClassNames.name(rateClass);
  const who = principal ? `${principal.kind}:${principal.subject}` : `ip:${address ?? "unknown"}`;
  return limiter.take(`${name}:${who}`, rule).then(
    (decision) => {
      if (decision.allowed) return;
      const seconds = Math.max(1, Math.ceil(decision.retryAfterMs / 1000));
      throw resourceExhausted(`too many ${name} calls; try again in ${seconds} s`, decision.retryAfterMs);
    },
    (err: unknown) => {
      log.warn("rate limiter unavailable", { error: (err as Error).message, rate_class: name });
    },
  );
}
