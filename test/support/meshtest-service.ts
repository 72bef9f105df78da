import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { MeshTestService } from "../../gen/medmesh/meshtest/v1/meshtest_pb.js";

/** What the handlers observed, so tests can assert on the server side of a call. */
export interface Observed {
  cancelledStreams: number;
  waitsCancelled: number;
}

export function meshTestService(observed: Observed): ServiceImpl<typeof MeshTestService> {
  return {
    echo(req) {
      if (req.text === "boom") throw new Error("a bug with a secret stack trace");
      if (req.text === "refuse") throw new ConnectError("refused on purpose", Code.FailedPrecondition);
      return { text: req.text };
    },
    async *count(req, ctx) {
      try {
        for (let n = 1; n <= req.count; n++) {
          if (req.intervalMs) await sleep(req.intervalMs, undefined, { signal: ctx.signal });
          yield { n };
        }
      } catch (err) {
        if (ctx.signal.aborted) observed.cancelledStreams++;
        throw err;
      }
    },
    async sum(requests) {
      let total = 0n;
      let messages = 0;
      for await (const r of requests) {
        total += r.value;
        messages++;
      }
      return { total, messages };
    },
    async *chat(requests) {
      for await (const r of requests) yield { text: r.text.toUpperCase() };
    },
    async wait(req, ctx) {
      const remaining = ctx.timeoutMs() ?? 0;
      try {
        await sleep(req.ms, undefined, { signal: ctx.signal });
      } catch (err) {
        observed.waitsCancelled++;
        throw err;
      }
      return { remainingMs: BigInt(Math.max(0, Math.round(remaining))) };
    },
  };
}
