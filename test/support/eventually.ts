/**
 * Polls `probe` every 100 ms until it gives something other than undefined, and returns it; fails
 * naming `what` once `timeoutMs` has passed. For what a service does asynchronously (a consumer
 * applying an event, a mail arriving), where a fixed sleep would be either flaky or slow.
 */
export async function eventually<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const got = await probe();
    if (got !== undefined) return got;
    if (Date.now() > until) throw new Error(`timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
