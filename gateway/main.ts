import { setMaxListeners } from "node:events";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { identityKeySet } from "../platform/auth/key-set.js";
import { bearerPrincipalResolver } from "../platform/auth/principal.js";
import type { PrincipalResolver } from "../platform/grpc/interceptors/access.js";
import { rateLimitSpec, rateLimiting } from "../platform/grpc/interceptors/rate-limit.js";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { commonSpec, ConfigError, env, loadConfig } from "../platform/config/env.js";
import { components, hostField, portField } from "../platform/config/components.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { infrastructureInterceptors, meshInterceptors } from "../platform/grpc/interceptors/index.js";
import { reflectionServices } from "../platform/grpc/reflection.js";
import { isEntryPoint, runMain, type Started } from "../platform/lifecycle/run-main.js";
import { renderMetrics } from "../platform/telemetry/metrics.js";
import { startComponentTelemetry } from "../platform/telemetry/sdk.js";
import { addressValues, parseTrustedProxies, vouchForClient } from "./client-address.js";
import { applyCors } from "./cors.js";
import { createDualProtocolServer, defaultLimits } from "./dual-protocol-server.js";
import { forwardingService } from "./forward.js";
import { gatewayHealthService } from "./health.js";
import { createConnectEdge } from "./connect-edge.js";
import { createPassthrough } from "./passthrough.js";
import { passRoutes } from "./passthrough-routes.js";
import { createRpcHandler } from "./rpc-handler.js";
import { createUpstreamPool } from "./upstream-pool.js";
import { defaultTarget, publicServices, targetVariable } from "./public-services.js";

export const configSpec = {
  ...commonSpec,
  ...hostField(components.gateway, "interface the gateway binds"),
  ...portField(components.gateway, "one port for HTTP/1.1 (Connect, gRPC-web) and h2c (gRPC)"),
  // A 4 MiB upload part sent as Connect JSON is base64: about 5.6 MB of body.
  GATEWAY_MAX_BODY_BYTES: env.bytes("largest request message accepted (and response sent)", 8 * 1024 * 1024),
  // The console served by a gateway on its default port, under either loopback name.
  CORS_ALLOWED_ORIGINS: env.list("browser origins allowed to call the gateway", [
    `http://localhost:${components.gateway.port}`,
    `http://127.0.0.1:${components.gateway.port}`,
  ]),
  GATEWAY_MAX_STREAMS_PER_CONNECTION: env.int(
    "concurrent HTTP/2 streams per connection; more are refused with REFUSED_STREAM",
    defaultLimits.maxStreamsPerConnection,
    1,
    10_000,
  ),
  GATEWAY_HEADERS_TIMEOUT_MS: env.int(
    "time a new connection has to send its first bytes (the whole HTTP/2 preface) and an HTTP/1.1 request its headers",
    defaultLimits.headersTimeoutMs,
    100,
    600_000,
  ),
  GATEWAY_REQUEST_TIMEOUT_MS: env.int(
    "time an HTTP/1.1 request has to arrive whole; an HTTP/2 request body idle this long is cut (responses are not bound)",
    defaultLimits.requestTimeoutMs,
    100,
    3_600_000,
  ),
  GATEWAY_IDLE_TIMEOUT_MS: env.int(
    "a connection with no call in flight and no traffic is closed after this long",
    defaultLimits.idleTimeoutMs,
    100,
    3_600_000,
  ),
  GATEWAY_MAX_HEADER_BYTES: env.bytes("largest request header block", defaultLimits.maxHeaderBytes),
  DEFAULT_DEADLINE_MS: env.int("deadline for unary calls that set none", 10_000, 100, 300_000),
  MAX_DEADLINE_MS: env.int("longest deadline a call may ask for", 60_000, 100, 600_000),
  ...rateLimitSpec,
  GATEWAY_TRUSTED_PROXIES: env.parsed(
    "proxies (addresses or CIDR prefixes) whose X-Forwarded-For names the client; empty trusts none",
    "",
    parseTrustedProxies,
  ),
  ...Object.fromEntries(
    publicServices.map((s) => [targetVariable(s), env.string(`gRPC address of ${s.typeName}`, defaultTarget(s))]),
  ),
};

type Req = IncomingMessage | Http2ServerRequest;
type Res = ServerResponse | Http2ServerResponse;

export interface GatewayOptions {
  /** Services to expose instead of the contracts' public ones (tests use this). */
  services?: DescService[];
  /** Replaces token verification; only code can pass this (benchmarks measure what it costs). */
  resolvePrincipal?: PrincipalResolver;
}

export async function startGateway(
  source: Record<string, string | undefined> = process.env,
  opts: GatewayOptions = {},
): Promise<Started & { port: number }> {
  const config = loadConfig(configSpec, source) as ReturnType<typeof loadConfig<typeof configSpec>> &
    Record<string, string>;
  if (config.GATEWAY_HEADERS_TIMEOUT_MS > config.GATEWAY_REQUEST_TIMEOUT_MS) {
    throw new ConfigError([
      `GATEWAY_HEADERS_TIMEOUT_MS (${config.GATEWAY_HEADERS_TIMEOUT_MS}) must not exceed GATEWAY_REQUEST_TIMEOUT_MS (${config.GATEWAY_REQUEST_TIMEOUT_MS}): the headers are part of the request`,
    ]);
  }
  const telemetry = startComponentTelemetry("gateway", config);
  const shutdown = new AbortController();
  // Every call in flight listens to this signal; hundreds at once is normal, not a leak.
  setMaxListeners(0, shutdown.signal);

  const exposed = opts.services ?? publicServices;
  const upstreams = exposed.map((service) => {
    const target = config[targetVariable(service)] ?? source[targetVariable(service)];
    if (!target)
      throw new ConfigError([`${targetVariable(service)} is required (gRPC address of ${service.typeName})`]);
    return {
      service,
      target,
      forward: forwardingService(service, target, {
        maxMessageBytes: config.GATEWAY_MAX_BODY_BYTES,
        defaultUnaryMs: config.DEFAULT_DEADLINE_MS,
      }),
      health: createMeshClient(Health, target),
    };
  });

  const rateLimit = rateLimiting(config);
  // Short enough that /.well-known/jwks.json (max-age 30) shows a rotated key promptly.
  const keys = identityKeySet(config.IDENTITY_TARGET!, { ttlMs: 30_000 });
  const resolvePrincipal = opts.resolvePrincipal ?? bearerPrincipalResolver(keys);
  const pool = createUpstreamPool();
  const edgeOptions = {
    routes: passRoutes(upstreams),
    pool,
    resolvePrincipal,
    rateLimit,
    trustedProxies: config.GATEWAY_TRUSTED_PROXIES,
    edgeSecrets: config.MESH_EDGE_SECRET,
    maxMessageBytes: config.GATEWAY_MAX_BODY_BYTES,
    defaultUnaryMs: config.DEFAULT_DEADLINE_MS,
    maxUnaryMs: config.MAX_DEADLINE_MS,
    shutdown: shutdown.signal,
  };
  const passthrough = createPassthrough(edgeOptions);
  const connect = createConnectEdge(edgeOptions);
  // What neither takes (gRPC and gRPC-web credential calls, compressed Connect requests, Connect
  // client streams, reflection and health) is decoded by connect-node and forwarded by grpc-js.
  const rpcInterceptors = [
    ...meshInterceptors({ component: "gateway", resolvePrincipal, rateLimit }),
    vouchForClient(config.MESH_EDGE_SECRET),
  ];
  const infraInterceptors = infrastructureInterceptors("gateway");
  const rpc = createRpcHandler({
    readMaxBytes: config.GATEWAY_MAX_BODY_BYTES,
    writeMaxBytes: config.GATEWAY_MAX_BODY_BYTES,
    maxUnaryTimeoutMs: config.MAX_DEADLINE_MS,
    // A misspelt field or enum name from a script is an error to report, not data to drop.
    jsonOptions: { ignoreUnknownFields: false },
    // Anonymous callers are rate-limited by their address, here and (vouched for) at the services.
    contextValues: (req) => addressValues(req, config.GATEWAY_TRUSTED_PROXIES),
    shutdownSignal: shutdown.signal,
    routes(router) {
      for (const u of upstreams) router.service(u.service, u.forward.impl, { interceptors: rpcInterceptors });
      // Reflection answers for every public service at once, from the gateway's own descriptors.
      for (const r of reflectionServices(exposed)) {
        router.service(r.service, r.impl as ServiceImpl<DescService>, { interceptors: infraInterceptors });
      }
      const h = gatewayHealthService(upstreams, shutdown.signal);
      router.service(h.service, h.impl, { interceptors: infraInterceptors });
    },
    fallback: (req, res) => void plainHttp(req, res as Res),
  });

  async function readiness(): Promise<{ ready: boolean; upstreams: Record<string, string> }> {
    const results = await Promise.all(
      upstreams.map(async (u) => {
        try {
          const r = await u.health.check({ service: u.service.typeName }, { timeoutMs: 1_000 });
          return [u.service.typeName, HealthCheckResponse_ServingStatus[r.status]] as const;
        } catch (err) {
          // The code only: grpc-js' own message names addresses and load-balancer states.
          return [u.service.typeName, `UNREACHABLE (${Code[ConnectError.from(err).code]})`] as const;
        }
      }),
    );
    return {
      ready: !shutdown.signal.aborted && results.every(([, s]) => s === "SERVING"),
      upstreams: Object.fromEntries(results),
    };
  }

  async function plainHttp(req: Req, res: Res) {
    const path = (req.url ?? "/").split("?")[0];
    const json = (status: number, body: unknown) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body) + "\n");
    };
    if (path === "/healthz")
      return json(shutdown.signal.aborted ? 503 : 200, { status: shutdown.signal.aborted ? "stopping" : "ok" });
    if (path === "/readyz") {
      const r = await readiness();
      return json(r.ready ? 200 : 503, r);
    }
    if (path === "/.well-known/jwks.json") {
      // The key set the gateway verifies with, re-served for anyone verifying medmesh tokens.
      try {
        const body = JSON.stringify(await keys.current());
        res.writeHead(200, { "content-type": "application/jwk-set+json", "cache-control": "public, max-age=30" });
        return res.end(body);
      } catch {
        return json(503, {
          code: "unavailable",
          message: "the signing keys cannot be fetched right now; try again shortly",
        });
      }
    }
    if (path === "/metrics") {
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
      return res.end(renderMetrics());
    }
    json(404, {
      code: "not_found",
      message: `no route for ${req.method} ${path}; RPCs live under /<package>.<Service>/<Method>`,
    });
  }

  const allowed = new Set(config.CORS_ALLOWED_ORIGINS);
  const server = createDualProtocolServer(
    (req, res) => {
      if (applyCors(allowed, req, res)) return;
      if (!connect.handle(req, res) && !passthrough.handle(req, res)) rpc(req, res);
    },
    {
      maxHeaderBytes: config.GATEWAY_MAX_HEADER_BYTES,
      headersTimeoutMs: config.GATEWAY_HEADERS_TIMEOUT_MS,
      requestTimeoutMs: config.GATEWAY_REQUEST_TIMEOUT_MS,
      idleTimeoutMs: config.GATEWAY_IDLE_TIMEOUT_MS,
      maxStreamsPerConnection: config.GATEWAY_MAX_STREAMS_PER_CONNECTION,
    },
    // Only plain gRPC without an Origin is taken, so applyCors would have had nothing to do.
    passthrough.takeStream,
  );
  const port = await server.listen(config.GATEWAY_PORT, config.GATEWAY_HOST);
  const host = config.GATEWAY_HOST.includes(":") ? `[${config.GATEWAY_HOST}]` : config.GATEWAY_HOST;
  return {
    port,
    endpoints: { gateway: `http://${host}:${port}` },
    async stop() {
      shutdown.abort();
      await server.close(config.SHUTDOWN_GRACE_MS);
      pool.close();
      for (const u of upstreams) {
        u.forward.close();
        u.health.close();
      }
      await rateLimit.limiter.close();
      keys.close();
      await telemetry.shutdown();
    },
  };
}

if (isEntryPoint(import.meta.url)) void runMain("gateway", () => startGateway());
