export interface StatusSubscription {
  /** Resolves on the next change notice, after the poll interval at the latest, or when the signal aborts. */
  next(signal: AbortSignal): Promise<void>;
  close(): void;
}

/**
 * Tells watchers that a document's status changed. A change made by this process wakes them at
 * once; one made by another instance of the service is found by polling the status history, so
 * any number of replicas can share one database without a broadcast channel between them.
 */
export class StatusFeed {
  private readonly listeners = new Map<string, Set<() => void>>();

  constructor(readonly pollMs = 1000) {}

  notify(documentId: string): void {
    for (const wake of this.listeners.get(documentId) ?? []) wake();
  }

  subscribe(documentId: string): StatusSubscription {
    let pending = false;
    let resolveWait: (() => void) | undefined;
    const wake = () => {
      pending = true;
      resolveWait?.();
    };
    let set = this.listeners.get(documentId);
    if (!set) this.listeners.set(documentId, (set = new Set()));
    set.add(wake);
    return {
      next: (signal) => {
        if (pending || signal.aborted) {
          pending = false;
          return Promise.resolve();
        }
        return new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(timer);
            signal.removeEventListener("abort", done);
            resolveWait = undefined;
            pending = false;
            resolve();
          };
          const timer = setTimeout(done, this.pollMs);
          signal.addEventListener("abort", done, { once: true });
          resolveWait = done;
        });
      },
      close: () => {
        set!.delete(wake);
        if (set!.size === 0) this.listeners.delete(documentId);
      },
    };
  }
}
