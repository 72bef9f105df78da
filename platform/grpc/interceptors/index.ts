import type { Interceptor } from "@connectrpc/connect";
import { accessInterceptor, type PrincipalResolver } from "./access.js";
import { deadlineInterceptor } from "./deadline.js";
import { errorsInterceptor } from "./errors.js";
import { loggingInterceptor } from "./logging.js";
import { serverTracingInterceptor } from "./tracing.js";
import { validationInterceptor } from "./validation.js";

export interface MeshInterceptorOptions {
  component: string;
  resolvePrincipal?: PrincipalResolver;
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
    validationInterceptor(),
  ];
}

/** For the infrastructure services (health, reflection), which carry no access policy. */
export function infrastructureInterceptors(component: string): Interceptor[] {
  return [loggingInterceptor(component), errorsInterceptor()];
}
