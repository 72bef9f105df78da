import { Code } from "@connectrpc/connect";

/**
 * What a caller of the gateway reads in a status the mesh made up on its way, rather than one a
 * service chose: a deadline, a cancellation, an unreachable service. Shared by the decoding
 * forwarder (forward.ts) and the pass-through (passthrough.ts), so both say the same.
 */

// What grpc-js writes into a status it made up itself: load-balancer states, peer addresses,
// attempt counts, timings. True for the client that asked, useless and revealing to a caller.
// A bracketed IPv6 address has a colon in it; a field path's index ("events[0]") has not.
export const transportDetail =
  /remote_addr|LB pick|previous attempts|name resolution|subchannel|RST_STREAM|HTTP\/2|ECONN|EPIPE|\b\d{1,3}(\.\d{1,3}){3}(:\d+)?\b|\[[0-9a-f]*:[0-9a-f:.]*\]/i;

export const plainSentence: Partial<Record<Code, string>> = {
  [Code.DeadlineExceeded]: "the deadline expired before the call finished",
  [Code.Canceled]: "the call was cancelled",
  [Code.Unavailable]: "the service is unavailable right now; try again shortly",
  [Code.Internal]: "the call failed inside the mesh",
  [Code.Unknown]: "the call failed inside the mesh",
  [Code.ResourceExhausted]: "a message was larger than the mesh accepts",
};

/** The message a caller gets for `code`: the plain sentence where the original may not stand. */
export function edgeMessage(code: Code, message: string): string {
  const plain = code === Code.DeadlineExceeded || code === Code.Canceled || transportDetail.test(message);
  return plain ? (plainSentence[code] ?? "the call failed") : message;
}
