/**
 * Postgres error classes the services act on. pg and PGlite both surface the server's SQLSTATE
 * as `code` on the thrown error.
 */

/** SQLSTATE 23505: a unique index refused the row (a duplicate, or a racing insert that won). */
export function isUniqueViolation(err: unknown): boolean {
  return typeof err === "object" && err !== null && (err as { code?: unknown }).code === "23505";
}
