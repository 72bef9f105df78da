import type { DescMethod } from "@bufbuild/protobuf";
import { ConnectError, Code, type Interceptor } from "@connectrpc/connect";
import { levelEnabled, logger } from "../../telemetry/logger.js";
import { rpcSeries, type RpcSeries } from "../../telemetry/metrics.js";
import { rpcName } from "./rpc-name.js";
import { finishWith, type StreamHooks } from "./stream-end.js";

/** One JSON line per finished call: method, status and duration. Never the payload. */
export function loggingInterceptor(component: string): Interceptor {
  const log = logger.child({ component });
  const series = new WeakMap<DescMethod, RpcSeries>();
  const seriesOf = (method: DescMethod) => {
    let s = series.get(method);
    if (!s) series.set(method, (s = rpcSeries(component, rpcName(method))));
    return s;
  };
  // Per call only inline arrows: under tsx every named closure made per call costs a __name call.
  const finished = (method: DescMethod, started: number, err?: unknown) => {
    const durationMs = Math.round((performance.now() - started) * 100) / 100;
    if (err === undefined) {
      seriesOf(method).record("ok", durationMs);
      if (levelEnabled("debug"))
        log.debug("rpc finished", { rpc: rpcName(method), code: "ok", duration_ms: durationMs });
      return;
    }
    const ce = ConnectError.from(err);
    const code = Code[ce.code]?.toString() ?? "unknown";
    seriesOf(method).record(code, durationMs);
    const fields = { rpc: rpcName(method), code, duration_ms: durationMs, error: ce.rawMessage };
    if (ce.code === Code.Internal) log.error("rpc failed", fields);
    else log.info("rpc rejected", fields);
  };
  const streamHooks: StreamHooks<{ method: DescMethod; started: number }> = {
    end: (s, err) => finished(s.method, s.started, err),
  };
  return (next) => (req) => {
    const started = performance.now();
    let pending: ReturnType<typeof next>;
    try {
      pending = next(req);
    } catch (err) {
      finished(req.method, started, err);
      return Promise.reject(err);
    }
    return pending.then(
      (res) => {
        if (res.stream) return finishWith(res, streamHooks, { method: req.method, started });
        finished(req.method, started);
        return res;
      },
      (err: unknown) => {
        finished(req.method, started, err);
        throw err;
      },
    ) as ReturnType<typeof next>;
  };
}
