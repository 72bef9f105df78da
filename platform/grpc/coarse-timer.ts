/**
 * Timers for bounds where arriving a little late does not matter (the time a request has to
 * arrive at all): one interval checks every pending bound, instead of a Node timer set and
 * cleared on every call. A bound fires between `ms` and `ms + resolutionMs` after it was set.
 */
export interface CoarseTimers {
  set(ms: number, fire: () => void): object;
  clear(handle: object | undefined): void;
}

interface Pending {
  at: number;
  fire: () => void;
}

export function coarseTimers(resolutionMs: number): CoarseTimers {
  const pending = new Set<Pending>();
  let ticking: NodeJS.Timeout | undefined;
  const tick = () => {
    const now = performance.now();
    for (const p of pending) {
      if (p.at > now) continue;
      pending.delete(p);
      p.fire();
    }
    if (pending.size === 0) {
      clearInterval(ticking);
      ticking = undefined;
    }
  };
  return {
    set(ms, fire) {
      const p: Pending = { at: performance.now() + ms, fire };
      pending.add(p);
      if (!ticking) {
        ticking = setInterval(tick, resolutionMs);
        // A bound never keeps the process alive on its own.
        ticking.unref();
      }
      return p;
    },
    clear(handle) {
      if (handle) pending.delete(handle as Pending);
    },
  };
}
