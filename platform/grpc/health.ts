import { EventEmitter, on } from "node:events";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import {
  Health,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as Status,
} from "../../gen/grpc/health/v1/health_pb.js";

export { Status as ServingStatus };

/**
 * Serving status per service name ("" is the whole server). A probe (e.g. the database ping)
 * flips a status; Watch streams every change.
 */
export class HealthState {
  private readonly statuses = new Map<string, Status>();
  private readonly changes = new EventEmitter();

  constructor(serviceNames: string[]) {
    this.statuses.set("", Status.SERVING);
    for (const n of serviceNames) this.statuses.set(n, Status.SERVING);
    this.changes.setMaxListeners(0);
  }

  get(name: string): Status | undefined {
    return this.statuses.get(name);
  }

  /** Set every known service (and the server) at once: health here is process-wide. */
  setAll(status: Status): void {
    for (const name of this.statuses.keys()) this.set(name, status);
  }

  set(name: string, status: Status): void {
    if (this.statuses.get(name) === status) return;
    this.statuses.set(name, status);
    this.changes.emit("change", name, status);
  }

  snapshot(): Record<string, Status> {
    return Object.fromEntries(this.statuses);
  }

  async *watch(name: string, signal: AbortSignal): AsyncGenerator<Status> {
    let last = this.statuses.get(name) ?? Status.SERVICE_UNKNOWN;
    yield last;
    try {
      for await (const [changed, status] of on(this.changes, "change", { signal })) {
        if (changed !== name || status === last) continue;
        last = status as Status;
        yield last;
      }
    } catch (err) {
      if ((err as Error).name !== "AbortError") throw err;
    }
  }
}

export function healthService(state: HealthState): { service: typeof Health; impl: ServiceImpl<typeof Health> } {
  return {
    service: Health,
    impl: {
      check(req) {
        const status = state.get(req.service);
        if (status === undefined) throw new ConnectError(`unknown service ${req.service}`, Code.NotFound);
        return { status };
      },
      async *watch(req, ctx: HandlerContext) {
        for await (const status of state.watch(req.service, ctx.signal)) yield { status };
      },
      list() {
        const statuses: Record<string, ReturnType<typeof create<typeof HealthCheckResponseSchema>>> = {};
        for (const [name, status] of Object.entries(state.snapshot())) {
          if (name) statuses[name] = create(HealthCheckResponseSchema, { status });
        }
        return { statuses };
      },
    },
  };
}
