import { setMaxListeners } from "node:events";
import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor, type ServiceImpl } from "@connectrpc/connect";
import { isConnectionLost } from "../db/errors.js";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { logger } from "../telemetry/logger.js";
import { requestArrivalBound, toGrpcService, type GrpcService } from "./adapter.js";
import { HealthState, healthService, ServingStatus } from "./health.js";
import { infrastructureInterceptors } from "./interceptors/index.js";
import { finishWith } from "./interceptors/stream-end.js";
import { reflectionServices } from "./reflection.js";
import { http2ServersOf, RequestArrivalBound } from "./request-arrival.js";

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

/** A grpc-js server with the given services, health and reflection (v1 and v1alpha). */
export async function startGrpcServer(opts: GrpcServerOptions): Promise<RunningGrpcServer> {
  const log = logger.child({ component: opts.name });
  const shutdown = new AbortController();
  // Every call in flight listens to this signal; hundreds at once is normal, not a leak.
  setMaxListeners(0, shutdown.signal);
  const serverOptions = {
    "grpc.max_receive_message_length": opts.maxMessageBytes,
    "grpc.max_send_message_length": opts.maxMessageBytes,
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
    // Keepalive drops a peer that stops answering pings (40 s), but a peer whose HTTP/2 stack
    // answers them and never opens a stream would hold its socket for good; grpc-js has no
    // handshake or header timeout of its own. Clients that were merely quiet reconnect on their
    // next call, as after any GOAWAY.
    "grpc.max_connection_idle_ms": opts.maxConnectionIdleMs ?? 5 * 60_000,
  };
  // The request-arrival bound watches grpc-js's HTTP/2 streams when it can reach them, which
  // spares every call a ServerInterceptor; should grpc-js hide them, the interceptor does it.
  let server = new Server(serverOptions);
  const http2Servers = http2ServersOf(server);
  const waitsForRequest = new Set<string>();
  const arrival =
    opts.deadlines && http2Servers
      ? new RequestArrivalBound(opts.deadlines.defaultUnaryMs, (path) => waitsForRequest.has(path))
      : undefined;
  if (opts.deadlines && !arrival)
    server = new Server({ ...serverOptions, interceptors: [requestArrivalBound(opts.deadlines.defaultUnaryMs)] });
  const addService = (g: GrpcService) => {
    for (const m of Object.values(g.definition)) if (!m.requestStream) waitsForRequest.add(m.path);
    server.addService(g.definition, g.implementation);
  };
  const health = new HealthState(opts.services.map((s) => s.service.typeName));
  const adapterFor = (interceptors: Interceptor[]) => ({
    interceptors,
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
    addService(toGrpcService(service, impl as Partial<ServiceImpl<DescService>>, adapterFor(serviceInterceptors)));
  }
  const infra = [healthService(health), ...reflectionServices(opts.services.map((s) => s.service))];
  for (const { service, impl } of infra) {
    addService(
      toGrpcService(
        service,
        impl as Partial<ServiceImpl<DescService>>,
        adapterFor(infrastructureInterceptors(opts.name)),
      ),
    );
  }

  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(bindAddress(opts.host, opts.port), ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  if (arrival && http2Servers) for (const h of http2Servers()) arrival.watch(h);

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
      shutdown.abort();
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          log.warn("calls still running after the grace period; cancelling them", { grace_ms: graceMs });
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
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
  return (next) => async (req) => {
    try {
      return finishWith(await next(req), { end: () => {}, mapError: check });
    } catch (err) {
      throw check(err);
    }
  };
}
