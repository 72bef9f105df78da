import { ConnectError, Code, type Interceptor } from "@connectrpc/connect";
import { logger } from "../../telemetry/logger.js";
import { finishWith } from "./stream-end.js";
import { recordRpc } from "../../telemetry/metrics.js";

/** One JSON line per finished call: method, status and duration. Never the payload. */
export function loggingInterceptor(component: string): Interceptor {
  const log = logger.child({ component });
  return (next) => async (req) => {
    const started = performance.now();
    const method = `${req.service.typeName}/${req.method.name}`;
    const done = (err?: unknown) => {
      const code = err === undefined ? "ok" : (Code[ConnectError.from(err).code]?.toString() ?? "unknown");
      const durationMs = Math.round((performance.now() - started) * 100) / 100;
      recordRpc(component, method, code, durationMs);
      const fields = { rpc: method, code, duration_ms: durationMs };
      if (err === undefined) log.debug("rpc finished", fields);
      else if (ConnectError.from(err).code === Code.Internal)
        log.error("rpc failed", { ...fields, error: ConnectError.from(err).rawMessage });
      else log.info("rpc rejected", { ...fields, error: ConnectError.from(err).rawMessage });
    };
    try {
      return finishWith(await next(req), { end: done });
    } catch (err) {
      done(err);
      throw err;
    }
  };
}
