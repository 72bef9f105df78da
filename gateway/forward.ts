import type { DescMethod, DescService } from "@bufbuild/protobuf";
import type { CallOptions, Client, HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { createMeshClient } from "../platform/grpc/client.js";
import { isTransportHeader } from "../platform/grpc/metadata.js";

// Headers a browser sends that mean nothing to a service and should not travel inward.
const edgeOnly = new Set([
  "origin",
  "referer",
  "cookie",
  "accept",
  "accept-language",
  "sec-fetch-mode",
  "sec-fetch-site",
  "sec-fetch-dest",
  "sec-ch-ua",
  "sec-ch-ua-mobile",
  "sec-ch-ua-platform",
  "x-grpc-web",
  "x-user-agent",
  "priority",
  "pragma",
  "cache-control",
]);

function inbound(ctx: HandlerContext): Headers {
  const out = new Headers();
  ctx.requestHeader.forEach((v, k) => {
    // traceparent is re-issued by the gateway's own client span, so it is not copied either.
    if (isTransportHeader(k) || edgeOnly.has(k) || k === "traceparent" || k === "tracestate") return;
    out.set(k, v);
  });
  return out;
}

function copyInto(target: Headers) {
  return (h: Headers) =>
    h.forEach((v, k) => {
      if (!isTransportHeader(k)) target.set(k, v);
    });
}

function callOptions(ctx: HandlerContext, defaultUnaryMs: number | undefined): CallOptions {
  return {
    headers: inbound(ctx),
    // The browser's deadline travels on; a unary call without one gets the mesh default.
    timeoutMs: ctx.timeoutMs() ?? defaultUnaryMs,
    signal: ctx.signal,
    onHeader: copyInto(ctx.responseHeader),
    onTrailer: copyInto(ctx.responseTrailer),
  };
}

type AnyMethod = (input: unknown, options?: CallOptions) => unknown;

/**
 * A ServiceImpl that forwards every method of `service` to its upstream, built from the
 * descriptor alone: adding an RPC to a contract needs no gateway code. Status codes, details,
 * headers and trailers of the upstream come back unchanged.
 */
export function forwardingService(
  service: DescService,
  target: string,
  opts: { maxMessageBytes: number; defaultUnaryMs: number },
): { impl: ServiceImpl<DescService>; close(): void } {
  const upstream = createMeshClient(service, target, {
    maxMessageBytes: opts.maxMessageBytes,
  }) as unknown as Client<DescService> & { close(): void };
  const impl: Record<string, unknown> = {};
  for (const method of service.methods) {
    const call = (upstream as unknown as Record<string, AnyMethod>)[method.localName]!;
    impl[method.localName] = forwarder(method, call, opts.defaultUnaryMs);
  }
  return { impl: impl as ServiceImpl<DescService>, close: () => upstream.close() };
}

function forwarder(method: DescMethod, call: AnyMethod, defaultUnaryMs: number) {
  switch (method.methodKind) {
    case "unary":
      return (input: unknown, ctx: HandlerContext) => call(input, callOptions(ctx, defaultUnaryMs));
    case "client_streaming":
      return (input: unknown, ctx: HandlerContext) => call(input, callOptions(ctx, undefined));
    case "server_streaming":
    case "bidi_streaming":
      return (input: unknown, ctx: HandlerContext) =>
        call(input, callOptions(ctx, undefined)) as AsyncIterable<unknown>;
  }
}
