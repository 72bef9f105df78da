import { context, propagation, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { ConnectError, type Interceptor } from "@connectrpc/connect";
import { finishWith } from "./stream-end.js";

const tracer = trace.getTracer("medmesh-rpc");

const headerGetter = {
  keys: (h: Headers) => {
    const out: string[] = [];
    h.forEach((_v, k) => out.push(k));
    return out;
  },
  get: (h: Headers, key: string) => h.get(key) ?? undefined,
};

/**
 * Server span per call, continuing the caller's W3C trace context. Neither grpc-js served
 * through our adapter nor connect-node is covered by an official instrumentation, so the
 * mesh does it here, once for both.
 */
export function serverTracingInterceptor(component: string): Interceptor {
  return (next) => async (req) => {
    const parent = propagation.extract(context.active(), req.header, headerGetter);
    const span = tracer.startSpan(
      `${req.service.typeName}/${req.method.name}`,
      {
        kind: SpanKind.SERVER,
        attributes: {
          "rpc.system": "grpc",
          "rpc.service": req.service.typeName,
          "rpc.method": req.method.name,
          "medmesh.component": component,
        },
      },
      parent,
    );
    const spanContext = trace.setSpan(parent, span);
    const end = (err?: unknown) => {
      if (err !== undefined) {
        const ce = ConnectError.from(err);
        span.setAttribute("rpc.grpc.status_code", ce.code);
        span.setStatus({ code: SpanStatusCode.ERROR, message: ce.rawMessage });
      } else {
        span.setAttribute("rpc.grpc.status_code", 0);
      }
      span.end();
    };
    try {
      const res = await context.with(spanContext, () => next(req));
      return finishWith(res, { end, wrapNext: (pull) => context.with(spanContext, pull) });
    } catch (err) {
      end(err);
      throw err;
    }
  };
}
