/**
 * The promise, or a rejection with `timedOut()` once `ms` have passed; the timer is cleared as soon
 * as either settles. A rejection of the promise arriving after the timeout is swallowed: the caller
 * has already been answered, and it must not surface as an unhandled rejection.
 */
export function withTimeout<T>(promise: Promise<T>, ms: number, timedOut: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(timedOut()), ms);
  });
  promise.catch(() => undefined);
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
