import { setMaxListeners } from "node:events";
import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor, type ServiceImpl } from "@connectrpc/connect";
import { isConnectionLost } from "../db/errors.js";
import { logger } from "../telemetry/logger.js";
import { routesOf, type DecodeShortcuts } from "./adapter.js";
import { H2Transport, type MethodRoute } from "./h2-transport.js";
import { HealthState, healthService, ServingStatus } from "./health.js";
import { infrastructureInterceptors } from "./interceptors/index.js";
import { finishWith, type StreamHooks } from "./interceptors/stream-end.js";
import { reflectionServices } from "./reflection.js";

export interface ServiceRegistration {
  service: DescService;
  /** A Connect ServiceImpl of `service`; typed at the call site with `register`. */
  impl: object;
}

/** Pairs a service with its implementation, type-checked against the descriptor. */
export function register<S extends DescService>(service: S, impl: Partial<ServiceImpl<S>>): ServiceRegistration {
  return { service, impl };
}

export interface GrpcServerOptions {
  name: string;
  host: string;
  port: number;
  services: ServiceRegistration[];
  interceptors: Interceptor[];
  /** Hand-written readers of hot request types of `services` (adapter.ts); not for health and reflection. */
  decodeShortcuts?: DecodeShortcuts;
  maxMessageBytes: number;
  /** Default and longest deadlines of unary calls. */
  deadlines?: { defaultUnaryMs: number; maxUnaryMs: number };
  /** Checked periodically; false flips health to NOT_SERVING until it passes again. */
  readinessProbe?: () => Promise<boolean>;
  probeIntervalMs?: number;
  /** A connection with no call in flight for this long is closed with GOAWAY; 5 minutes unless set. */
  maxConnectionIdleMs?: number;
}

export interface RunningGrpcServer {
  port: number;
  address: string;
  health: HealthState;
  /** Stop accepting, mark NOT_SERVING, end streams, drain in-flight calls for up to graceMs. */
  shutdown(graceMs?: number): Promise<void>;
}

function bindAddress(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * A gRPC server (platform/grpc/h2-transport.ts on node:http2) with the given services, health
 * and reflection (v1 and v1alpha).
 */
export async function startGrpcServer(opts: GrpcServerOptions): Promise<RunningGrpcServer> {
  const log = logger.child({ component: opts.name });
  const shutdown = new AbortController();
  // Every call in flight listens to this signal; hundreds at once is normal, not a leak.
  setMaxListeners(0, shutdown.signal);
  const routes = new Map<string, MethodRoute>();
  const addService = (r: Map<string, MethodRoute>) => {
    for (const [path, route] of r) routes.set(path, route);
  };
  const health = new HealthState(opts.services.map((s) => s.service.typeName));
  const adapterFor = (interceptors: Interceptor[], decodeShortcuts?: DecodeShortcuts) => ({
    interceptors,
    decodeShortcuts,
    shutdownSignal: shutdown.signal,
    deadlines: opts.deadlines,
  });

  // A call that lost its database connection is news the probe would only catch on its next
  // tick: stop advertising SERVING at once, and let the probe say SERVING again when the
  // database answers. Balancers and the gateway's /readyz then steer away during a restart.
  const serviceInterceptors = opts.readinessProbe
    ? [
        databaseLossInterceptor(() => {
          if (shutdown.signal.aborted || health.get("") === ServingStatus.NOT_SERVING) return;
          log.warn("lost the database connection during a call; not serving until it answers again");
          health.setAll(ServingStatus.NOT_SERVING);
        }),
        ...opts.interceptors,
      ]
    : opts.interceptors;
  for (const { service, impl } of opts.services) {
    addService(
      routesOf(
        service,
        impl as Partial<ServiceImpl<DescService>>,
        adapterFor(serviceInterceptors, opts.decodeShortcuts),
      ),
    );
  }
  const infra = [healthService(health), ...reflectionServices(opts.services.map((s) => s.service))];
  for (const { service, impl } of infra) {
    addService(
      routesOf(service, impl as Partial<ServiceImpl<DescService>>, adapterFor(infrastructureInterceptors(opts.name))),
    );
  }

  const transport = new H2Transport(routes, {
    maxMessageBytes: opts.maxMessageBytes,
    // Keepalive drops a peer that stops answering pings (40 s); a peer whose HTTP/2 stack answers
    // them and never opens a stream is closed by the idle bound. Clients that were merely quiet
    // reconnect on their next call, as after any GOAWAY.
    keepaliveMs: 30_000,
    keepaliveTimeoutMs: 10_000,
    maxConnectionIdleMs: opts.maxConnectionIdleMs ?? 5 * 60_000,
  });
  const port = await transport.listen(opts.host, opts.port);

  let probing: NodeJS.Timeout | undefined;
  if (opts.readinessProbe) {
    const probe = opts.readinessProbe;
    const run = async () => {
      const ok = await probe().catch(() => false);
      if (shutdown.signal.aborted) return;
      const next = ok ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
      if (health.get("") !== next)
        log.warn(ok ? "dependency recovered; serving" : "dependency unreachable; not serving");
      health.setAll(next);
    };
    await run();
    probing = setInterval(run, opts.probeIntervalMs ?? 2000);
    probing.unref();
  }

  return {
    port,
    address: bindAddress(opts.host, port),
    health,
    async shutdown(graceMs = 10_000) {
      if (shutdown.signal.aborted) return;
      clearInterval(probing);
      health.setAll(ServingStatus.NOT_SERVING);
      // Health watchers get NOT_SERVING on the wire before their streams end.
      await new Promise((r) => setTimeout(r, 20));
      shutdown.abort(new ConnectError("the server is shutting down; call again", Code.Unavailable));
      await transport.close(graceMs, () =>
        log.warn("calls still running after the grace period; cancelling them", { grace_ms: graceMs }),
      );
    },
  };
}

/**
 * Calls `onLoss` when a call fails because the database connection was lost (the errors
 * interceptor keeps the driver's error as the cause of the `unavailable` it answers).
 */
function databaseLossInterceptor(onLoss: () => void): Interceptor {
  const check = (err: unknown) => {
    if (err instanceof ConnectError && err.code === Code.Unavailable && isConnectionLost(err.cause)) onLoss();
    return err;
  };
  const hooks: StreamHooks<undefined> = { end: () => {}, mapError: (_s, err) => check(err) };
  return (next) => async (req) => {
    try {
      return finishWith(await next(req), hooks, undefined);
    } catch (err) {
      throw check(err);
    }
  };
}
