import { setTimeout as sleep } from "node:timers/promises";
import type { DescService } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as Status,
} from "../gen/grpc/health/v1/health_pb.js";

export interface HealthUpstream {
  service: DescService;
  health: Client<typeof Health>;
}

/** How often a Watch through the gateway asks the upstream again. */
const watchEveryMs = 1_000;

/**
 * grpc.health.v1 at the gateway. "" is the gateway itself; each exposed service answers with
 * what its upstream says right now, so a probe or a client pointed at the gateway learns whether
 * the service it calls can answer, not merely whether the gateway runs. An upstream that cannot
 * be reached is NOT_SERVING. Everything is NOT_SERVING once the gateway is stopping.
 */
export function gatewayHealthService(
  upstreams: HealthUpstream[],
  stopping: AbortSignal,
): { service: typeof Health; impl: ServiceImpl<typeof Health> } {
  const byName = new Map(upstreams.map((u) => [u.service.typeName, u]));

  async function statusOf(name: string, ctx: HandlerContext): Promise<Status | undefined> {
    if (name !== "" && !byName.has(name)) return undefined;
    if (stopping.aborted) return Status.NOT_SERVING;
    const u = byName.get(name);
    if (!u) return Status.SERVING;
    try {
      const timeoutMs = Math.min(1_000, ctx.timeoutMs() ?? 1_000);
      return (await u.health.check({ service: name }, { timeoutMs, signal: ctx.signal })).status;
    } catch {
      return Status.NOT_SERVING;
    }
  }

  return {
    service: Health,
    impl: {
      async check(req, ctx) {
        const status = await statusOf(req.service, ctx);
        if (status === undefined) throw new ConnectError(`unknown service ${req.service}`, Code.NotFound);
        return { status };
      },
      async *watch(req, ctx) {
        // The health protocol answers Watch for an unknown service with SERVICE_UNKNOWN, not an error.
        let last: Status | undefined;
        while (!ctx.signal.aborted) {
          const status = (await statusOf(req.service, ctx)) ?? Status.SERVICE_UNKNOWN;
          if (status !== last) yield { status };
          last = status;
          try {
            await sleep(watchEveryMs, undefined, { signal: ctx.signal });
          } catch {
            return;
          }
        }
      },
      async list(_req, ctx) {
        const names = ["", ...byName.keys()];
        const statuses = await Promise.all(names.map((n) => statusOf(n, ctx)));
        return {
          statuses: Object.fromEntries(
            names.flatMap((n, i) => (n ? [[n, create(HealthCheckResponseSchema, { status: statuses[i] })]] : [])),
          ),
        };
      },
    },
  };
}
