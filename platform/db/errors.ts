/**
 * Postgres error classes the services act on. pg and PGlite both surface the server's SQLSTATE
 * as `code` on the thrown error.
 */

/** SQLSTATE 23505: a unique index refused the row (a duplicate, or a racing insert that won). */
export function isUniqueViolation(err: unknown): boolean {
  return typeof err === "object" && err !== null && (err as { code?: unknown }).code === "23505";
}

// SQLSTATE classes and codes that mean "the server went away or cannot take us right now", not
// "this statement is wrong": class 08 (connection exception), 57P01 admin_shutdown (what
// pg_terminate_backend and a fast shutdown send), 57P02 crash_shutdown, 57P03 cannot_connect_now
// (starting up or shutting down) and 53300 too_many_connections.
const unreachableStates = new Set(["57P01", "57P02", "57P03", "53300"]);
// Socket-level failures on the way to, or in the middle of talking to, the server.
const socketCodes = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENETDOWN",
  "EAI_AGAIN",
]);
// What pg and pg-pool say, without a code, when a connection ends under them or never opens.
const lostMessages =
  /^(Connection terminated( unexpectedly| due to connection timeout)?|timeout exceeded when trying to connect|Client has encountered a connection error and is not queryable|Client was closed and is not queryable)$/;

/**
 * The database connection was lost or could not be made: the statement may be fine and worth
 * retrying once the server is back. Callers get `unavailable`, not `internal`; health re-checks.
 */
export function isConnectionLost(err: unknown): boolean {
  if (typeof err !== "object" || err === null) return false;
  const { code, message } = err as { code?: unknown; message?: unknown };
  if (typeof code === "string") {
    if (code.startsWith("08") && code.length === 5) return true;
    if (unreachableStates.has(code) || socketCodes.has(code)) return true;
  }
  // Node reports a refused connection to a host with several addresses as an AggregateError.
  if (err instanceof AggregateError && err.errors.some(isConnectionLost)) return true;
  return typeof message === "string" && lostMessages.test(message);
}
