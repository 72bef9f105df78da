/**
 * The iterator's next result, or a rejection with `reason()` as soon as the signal fires.
 *
 * Racing each read against one shared "aborted" promise looks equivalent but is not: every race
 * leaves a reaction on that promise which keeps the read's value reachable for as long as the
 * promise is pending, so a long stream would keep every chunk it ever read (a 1 GiB upload held
 * 1 GiB). Here each read has its own listener, removed as soon as the read settles.
 */
export function nextUnlessAborted<T>(
  it: Iterator<T> | AsyncIterator<T>,
  signal: AbortSignal,
  reason: () => Error,
): Promise<IteratorResult<T>> {
  if (signal.aborted) return Promise.reject(reason());
  return new Promise<IteratorResult<T>>((resolve, reject) => {
    const abort = () => reject(reason());
    signal.addEventListener("abort", abort, { once: true });
    Promise.resolve(it.next()).then(
      (r) => {
        signal.removeEventListener("abort", abort);
        resolve(r);
      },
      (err: unknown) => {
        signal.removeEventListener("abort", abort);
        reject(err);
      },
    );
  });
}
