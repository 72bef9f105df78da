import type { Interceptor } from "@connectrpc/connect";
import type { EdgeSecrets } from "../../auth/client-address.js";
import { accessInterceptor, type PrincipalResolver } from "./access.js";
import { vouchedAddressInterceptor } from "./client-address.js";
import { deadlineInterceptor } from "./deadline.js";
import { errorsInterceptor } from "./errors.js";
import { loggingInterceptor } from "./logging.js";
import { rateLimitInterceptor, type RateRules } from "./rate-limit.js";
import type { RateLimiter } from "../../cache/rate-limiter.js";
import { serverTracingInterceptor } from "./tracing.js";
import { validationInterceptor, type ValidationShortcuts } from "./validation.js";

export interface MeshInterceptorOptions {
  component: string;
  resolvePrincipal?: PrincipalResolver;
  /** Where the edge enforces rate classes (the gateway); services behind it need not. */
  rateLimit?: { limiter: RateLimiter; rules: RateRules };
  /**
   * For services behind the gateway: believe the client address the gateway vouches for when it
   * is signed with one of these secrets (MESH_EDGE_SECRET; undefined believes none). Never set at
   * the gateway, where statements from outside are dropped instead.
   */
  vouchedAddresses?: { secrets: EdgeSecrets | undefined };
  /** Hand checks of hot request types that pass plainly valid messages without protovalidate (validation.ts). */
  validationShortcuts?: ValidationShortcuts;
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
    ...(opts.vouchedAddresses ? [vouchedAddressInterceptor(opts.vouchedAddresses.secrets)] : []),
    ...(opts.rateLimit ? [rateLimitInterceptor(opts.rateLimit.limiter, opts.rateLimit.rules)] : []),
    validationInterceptor(opts.validationShortcuts),
  ];
}

/** For the infrastructure services (health, reflection), which carry no access policy. */
export function infrastructureInterceptors(component: string): Interceptor[] {
  return [loggingInterceptor(component), errorsInterceptor()];
}
