import { Code, ConnectError } from "@connectrpc/connect";
import { isConnectionLost } from "../db/errors.js";

/**
 * Whether a failed attempt is worth trying again as it is.
 *
 * - `transient`: something the event does not control was unavailable for a while (a service
 *   restarting, a deadline under load, a dropped connection, a database failing over). The same
 *   attempt is expected to pass later, so it is retried without a count limit.
 * - `permanent`: anything else, unknown errors included. Retrying is allowed a few times (the
 *   attempt may have hit a rare bug) and then the event goes to the dead-letter topic.
 *
 * Unknown errors are permanent on purpose: retrying forever is only safe for failures we know
 * end by themselves; a bug that throws a plain Error must reach an operator, not spin.
 */
export type FailureClass = "transient" | "permanent";

/**
 * Codes a caller may expect to clear on their own. ResourceExhausted only counts when the server
 * attached google.rpc.RetryInfo (a rate limit saying when to come back); without it the code is
 * also how a message over the size limit is refused, which no retry fixes.
 */
const transientCodes = new Set<Code>([Code.Unavailable, Code.DeadlineExceeded, Code.Aborted, Code.Canceled]);

/**
 * Postgres failures about the moment rather than the statement, beyond a lost connection (which
 * platform/db recognises): 40001 serialization failure and 40P01 deadlock, whose loser may simply
 * run again.
 */
const transientSqlStates = new Set(["40001", "40P01"]);

/** kafkajs errors about reaching the cluster rather than what was sent. */
const transientKafkaNames = new Set([
  "KafkaJSConnectionError",
  "KafkaJSConnectionClosedError",
  "KafkaJSRequestTimeoutError",
  "KafkaJSNoBrokerAvailableError",
  "KafkaJSLockTimeout",
]);

function classifyOne(err: unknown): FailureClass | undefined {
  if (err instanceof ConnectError) {
    if (transientCodes.has(err.code)) return "transient";
    if (
      err.code === Code.ResourceExhausted &&
      err.details.some((d) => ("type" in d ? d.type : d.desc.typeName) === "google.rpc.RetryInfo")
    )
      return "transient";
    // A gRPC answer is the other side's verdict; what caused it on our side does not change it.
    return "permanent";
  }
  if (typeof err !== "object" || err === null) return undefined;
  // Sockets, DNS, and a database connection that went away or cannot be made: one definition,
  // shared with the RPC error mapping, so a retry and an `unavailable` answer agree.
  if (isConnectionLost(err)) return "transient";
  const e = err as { code?: unknown; name?: unknown; retriable?: unknown };
  if (typeof e.code === "string" && transientSqlStates.has(e.code)) return "transient";
  if (typeof e.name === "string") {
    if (transientKafkaNames.has(e.name)) return "transient";
    // Any other kafkajs error says itself whether it may be retried.
    if (e.name.startsWith("KafkaJS") && e.retriable === true) return "transient";
  }
  return undefined;
}

/**
 * The class of a failure, looking through `cause` (kafkajs and pg wrap the socket error that
 * actually happened) up to a few levels deep.
 */
export function classifyFailure(err: unknown): FailureClass {
  let at: unknown = err;
  for (let depth = 0; depth < 5 && at !== undefined && at !== null; depth++) {
    const found = classifyOne(at);
    if (found) return found;
    at = (at as { cause?: unknown }).cause;
  }
  return "permanent";
}

export const isTransientFailure = (err: unknown): boolean => classifyFailure(err) === "transient";

/**
 * "Full jitter" exponential backoff: a random wait between 0 and min(cap, base × 2^n). Spreading
 * the retries of many consumers over the whole window keeps them from hitting a service that has
 * just come back all in the same instant.
 */
export function fullJitterBackoff(
  baseMs: number,
  maxMs: number,
  random: () => number = Math.random,
): (retry: number) => number {
  return (retry) => Math.floor(random() * Math.min(maxMs, baseMs * 2 ** Math.min(retry, 30)));
}
