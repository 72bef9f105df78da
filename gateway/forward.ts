import type { DescMethod, DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type CallOptions,
  type Client,
  type HandlerContext,
  type ServiceImpl,
} from "@connectrpc/connect";
import { createMeshClient } from "../platform/grpc/client.js";
import { forwardableHeaders, returnableHeaders } from "./edge-headers.js";
import { edgeMessage, plainSentence } from "./edge-status.js";

function callOptions(ctx: HandlerContext, defaultUnaryMs: number | undefined): CallOptions {
  // A call with less than a millisecond left cannot reach the service and come back; and the
  // client reads a timeout of 0 as "no deadline at all". It ends here.
  const remaining = ctx.timeoutMs();
  if (ctx.signal.aborted || (remaining !== undefined && remaining < 1)) {
    throw new ConnectError(plainSentence[Code.DeadlineExceeded]!, Code.DeadlineExceeded);
  }
  return {
    headers: forwardableHeaders(ctx.requestHeader),
    // The browser's deadline travels on; a unary call without one gets the mesh default.
    timeoutMs: ctx.timeoutMs() ?? defaultUnaryMs,
    signal: ctx.signal,
    onHeader: (h) => returnableHeaders(h, ctx.responseHeader),
    onTrailer: (h) => returnableHeaders(h, ctx.responseTrailer),
  };
}

/**
 * The error a caller of the gateway sees for a forwarded call.
 * - When the caller's deadline, disconnection or our shutdown ended the call, that is the
 *   reason, whatever grpc-js reports once we cancel its call (an expired deadline used to reach
 *   the caller as "Cancelled on client").
 * - A deadline or cancellation gets a plain sentence, and so does any message carrying
 *   transport detail.
 * - The upstream's trailers are not attached again: onTrailer has already copied them into the
 *   response, and connect-node would write both copies.
 */
function atTheEdge(err: unknown, ctx: HandlerContext): ConnectError {
  const ce = ConnectError.from(ctx.signal.aborted ? ctx.signal.reason : err);
  const out = new ConnectError(edgeMessage(ce.code, ce.rawMessage), ce.code);
  out.details.push(...ce.details);
  return out;
}

async function* guarded(source: () => AsyncIterable<unknown>, ctx: HandlerContext): AsyncIterable<unknown> {
  try {
    yield* source();
  } catch (err) {
    throw atTheEdge(err, ctx);
  }
}

type AnyMethod = (input: unknown, options?: CallOptions) => unknown;

/**
 * A ServiceImpl that forwards every method of `service` to its upstream, built from the
 * descriptor alone: adding an RPC to a contract needs no gateway code. Status codes, details,
 * headers and trailers of the upstream come back, less what
 * describes its transport (see edge-headers.ts and atTheEdge).
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
    case "client_streaming": {
      const defaultMs = method.methodKind === "unary" ? defaultUnaryMs : undefined;
      return async (input: unknown, ctx: HandlerContext) => {
        try {
          return await (call(input, callOptions(ctx, defaultMs)) as Promise<unknown>);
        } catch (err) {
          throw atTheEdge(err, ctx);
        }
      };
    }
    case "server_streaming":
    case "bidi_streaming":
      return (input: unknown, ctx: HandlerContext) =>
        guarded(() => call(input, callOptions(ctx, undefined)) as AsyncIterable<unknown>, ctx);
  }
}
