import { AsyncLocalStorage } from "node:async_hooks";
import { context, createContextKey } from "@opentelemetry/api";
import type { HandlerContext } from "@connectrpc/connect";
import { tracingMode } from "../telemetry/tracing-mode.js";

// The handler context of the RPC being served, so that clients called from inside a handler
// inherit its deadline and cancellation without every handler threading them through.
//
// With OpenTelemetry running, its AsyncLocalStorage-based context already follows every call;
// the handler context rides in it. Every enabled AsyncLocalStorage adds work to each promise,
// timer and tick of the process, so a store of our own is used only when there is no SDK.
const store = new AsyncLocalStorage<HandlerContext>();
const callKey = createContextKey("medmesh handler context");

export function runInCall<T>(ctx: HandlerContext, fn: () => T): T {
  if (tracingMode() !== "off") return context.with(context.active().setValue(callKey, ctx), fn);
  return store.run(ctx, fn);
}

export function currentCall(): HandlerContext | undefined {
  if (tracingMode() !== "off") {
    const inOtel = context.active().getValue(callKey) as HandlerContext | undefined;
    if (inOtel) return inOtel;
  }
  return store.getStore();
}
