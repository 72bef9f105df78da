import type { Interceptor } from "@connectrpc/connect";
import { accessInterceptor, type PrincipalResolver } from "./access.js";
import { deadlineInterceptor } from "./deadline.js";
import { errorsInterceptor } from "./errors.js";
import { loggingInterceptor } from "./logging.js";
import { rateLimitInterceptor, type RateRules } from "./rate-limit.js";
import type { RateLimiter } from "../../cache/rate-limiter.js";
import { serverTracingInterceptor } from "./tracing.js";
import { validationInterceptor } from "./validation.js";

export interface MeshInterceptorOptions {
  component: string;
  resolvePrincipal?: PrincipalResolver;
  /** Where the edge enforces rate classes (the gateway); services behind it need not. */
  rateLimit?: { limiter: RateLimiter; rules: RateRules };
}

/**
 * The one chain every medmesh server runs, the gateway included, outermost first:
 * the span opens before anything can fail, the log line sees the final status, unknown errors
 * are masked before they are logged as codes, and validation runs only for admitted callers.
 */
export function meshInterceptors(opts: MeshInterceptorOptions): Interceptor[] {
  return [
    serverTracingInterceptor(opts.component),
    loggingInterceptor(opts.component),
    errorsInterceptor(),
    deadlineInterceptor(),
    accessInterceptor(opts.resolvePrincipal),
    ...(opts.rateLimit ? [rateLimitInterceptor(opts.rateLimit.limiter, opts.rateLimit.rules)] : []),
    validationInterceptor(),
  ];
}

/** For the infrastructure services (health, reflection), which carry no access policy. */
export function infrastructureInterceptors(component: string): Interceptor[] {
  return [loggingInterceptor(component), errorsInterceptor()];
}
