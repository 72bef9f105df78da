import { AsyncLocalStorage } from "node:async_hooks";
import type { HandlerContext } from "@connectrpc/connect";

// The handler context of the RPC being served, so that clients called from inside a handler
// inherit its deadline and cancellation without every handler threading them through.
const store = new AsyncLocalStorage<HandlerContext>();

export function runInCall<T>(ctx: HandlerContext, fn: () => T): T {
  return store.run(ctx, fn);
}

export function currentCall(): HandlerContext | undefined {
  return store.getStore();
}
