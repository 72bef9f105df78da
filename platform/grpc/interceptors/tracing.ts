import type { DescMethod } from "@bufbuild/protobuf";
import {
  context,
  propagation,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Span,
} from "@opentelemetry/api";
import { ConnectError, type Interceptor, type StreamResponse, type UnaryResponse } from "@connectrpc/connect";
import { childIds } from "../../telemetry/span-ids.js";
import { tracingMode } from "../../telemetry/tracing-mode.js";
import { requestHeaderValue } from "../handler-context.js";
import { rpcName } from "./rpc-name.js";
import { finishWith, type StreamHooks } from "./stream-end.js";

const tracer = trace.getTracer("medmesh-rpc");

// The request is the carrier: a call of the adapter (platform/grpc/adapter.ts) then answers the propagator from its
// metadata without building Headers.
type Carrier = { header: Headers };
const headerGetter = {
  keys: (req: Carrier) => {
    const out: string[] = [];
    req.header.forEach((_v, k) => out.push(k));
    return out;
  },
  get: (req: Carrier, key: string) => requestHeaderValue(req, key) ?? undefined,
};

/**
 * Server span per call, continuing the caller's W3C trace context. Neither the mesh's gRPC
 * transport nor connect-node is covered by an official instrumentation, so the
 * mesh does it here, once for both.
 *
 * It does only what the process's telemetry needs (platform/telemetry/tracing-mode.ts): nothing
 * without an SDK; with an SDK that exports nowhere, only the ids (a non-recording span, so log
 * lines and outgoing calls still carry the trace); a real span only when spans are exported.
 */
export function serverTracingInterceptor(component: string): Interceptor {
  const attributes = new WeakMap<DescMethod, Attributes>();
  const attributesOf = (method: DescMethod) => {
    let a = attributes.get(method);
    if (!a) {
      a = Object.freeze({
        "rpc.system": "grpc",
        "rpc.service": method.parent.typeName,
        "rpc.method": method.name,
        "medmesh.component": component,
      });
      attributes.set(method, a);
    }
    return a;
  };
  return (next) => (req) => {
    const mode = tracingMode();
    if (mode === "off") return next(req);
    const parent = propagation.extract(context.active(), req, headerGetter);
    if (mode === "ids") {
      const spanContext = trace.setSpan(parent, trace.wrapSpanContext(childIds(parent)));
      // A unary answer is complete when it resolves; only a stream's later pulls need the context again.
      if (!req.stream) return context.with(spanContext, () => next(req));
      return context
        .with(spanContext, () => next(req))
        .then((res) => (res.stream ? finishWith(res, idsHooks, spanContext) : res)) as ReturnType<typeof next>;
    }
    const span = tracer.startSpan(
      rpcName(req.method),
      { kind: SpanKind.SERVER, attributes: attributesOf(req.method) },
      parent,
    );
    const spanContext = trace.setSpan(parent, span);
    const state: SpanState = { span, spanContext };
    let pending: Promise<UnaryResponse | StreamResponse>;
    try {
      pending = context.with(spanContext, () => next(req));
    } catch (err) {
      endSpan(span, err);
      return Promise.reject(err);
    }
    return pending.then(
      (res) => {
        if (res.stream) return finishWith(res, spanHooks, state);
        endSpan(span);
        return res;
      },
      (err: unknown) => {
        endSpan(span, err);
        throw err;
      },
    ) as ReturnType<typeof next>;
  };
}

function endSpan(span: Span, err?: unknown): void {
  if (err !== undefined) {
    const ce = ConnectError.from(err);
    span.setAttribute("rpc.grpc.status_code", ce.code);
    span.setStatus({ code: SpanStatusCode.ERROR, message: ce.rawMessage });
  } else {
    span.setAttribute("rpc.grpc.status_code", 0);
  }
  span.end();
}

interface SpanState {
  span: Span;
  spanContext: Context;
}

/** A stream's later pulls run in its trace context, so what they log and call carries the trace. */
const idsHooks: StreamHooks<Context> = {
  end() {},
  wrapNext: (spanContext, pull) => context.with(spanContext, pull),
};

const spanHooks: StreamHooks<SpanState> = {
  end: (s, err) => endSpan(s.span, err),
  wrapNext: (s, pull) => context.with(s.spanContext, pull),
};
