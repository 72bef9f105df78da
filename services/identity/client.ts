import type { HandlerContext } from "@connectrpc/connect";
import { clientAddressKey } from "../../platform/grpc/interceptors/client-address.js";
import { peerKey } from "../../platform/grpc/handler-context.js";

/** The address a sign-in came from: the one the gateway vouched for, else the peer. */
export const clientAddressOf = (ctx: HandlerContext | undefined): string =>
  // Tests call handlers with a bare context; an unknown address is not a reason to refuse a sign-in.
  ctx?.values?.get(clientAddressKey) ?? ctx?.values?.get(peerKey) ?? "";
