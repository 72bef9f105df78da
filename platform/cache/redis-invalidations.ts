import { Redis } from "ioredis";

/** Where Redis publishes the names of tracked keys that changed, for connections that asked with REDIRECT. */
const CHANNEL = "__redis__:invalidate";

export interface InvalidationHandlers {
  /** These keys changed (written, deleted, expired or evicted) since they were read. */
  changed(keys: string[]): void;
  /** Changes may have gone unseen (a connection dropped, a heartbeat was missed, the database was flushed): forget everything. */
  lost(): void;
}

export interface InvalidationFeed {
  /**
   * True while every change to a key under the prefix is known to reach `changed`: both
   * connections are up, tracking is on, and the last heartbeat came back in time. Copies kept
   * in process may be served only while this holds.
   */
  readonly live: boolean;
  close(): void;
}

export interface InvalidationFeedOptions {
  /** The connection whose writes need no report (NOLOOP): its owner applies them itself. */
  data: Redis;
  url: string;
  prefix: string;
  /** The subscriber's client name in Redis. */
  name?: string;
  /** How often the feed's connection is pinged; two missed answers count as lost. */
  heartbeatMs?: number;
}

/**
 * Server-assisted client-side caching in RESP2: a second connection subscribes to Redis'
 * invalidation channel, and the data connection turns on broadcast tracking of the prefix with
 * that connection as the target. Tracking is state of the data connection and the target is the
 * subscriber's client id, so either one reconnecting ends it: both ends re-arm it on `ready`,
 * and until they have, the feed is not live.
 *
 * A connection that stays open but silently stops delivering (a partition without a reset)
 * would otherwise go unnoticed for as long as TCP takes to give up; the heartbeat bounds that
 * to about two intervals, after which the subscriber is reconnected.
 */
export function trackInvalidations(opts: InvalidationFeedOptions, handlers: InvalidationHandlers): InvalidationFeed {
  const heartbeatMs = opts.heartbeatMs ?? 1_000;
  const sub = new Redis(opts.url, {
    autoResubscribe: false,
    maxRetriesPerRequest: 1,
    connectionName: opts.name ?? "medmesh-invalidations",
  });
  sub.on("error", () => undefined);
  let live = false;
  let closed = false;
  /** The subscriber's client id while it is subscribed. */
  let target: number | undefined;
  /** Bumped on every loss: an arming that began before one must not declare the feed live. */
  let losses = 0;
  /** Bumped on each of the subscriber's connections: a setup of an earlier one is void. */
  let subscriptions = 0;
  let lastHeard = Date.now();
  /** Armings run one after another: their OFF and ON must not interleave on the data connection. */
  let arming: Promise<void> = Promise.resolve();

  const lose = () => {
    losses++;
    live = false;
    handlers.lost();
  };

  const arm = () =>
    (arming = arming.then(async () => {
      const mine = losses;
      if (target === undefined || closed) return;
      try {
        // OFF first: tracking that is already on refuses a change of target.
        await opts.data.call("CLIENT", "TRACKING", "OFF");
        await opts.data.call(
          "CLIENT",
          "TRACKING",
          "ON",
          "REDIRECT",
          String(target),
          "BCAST",
          "PREFIX",
          opts.prefix,
          "NOLOOP",
        );
      } catch {
        return; // the data connection's next `ready` tries again
      }
      if (mine === losses && !closed) {
        lastHeard = Date.now();
        live = true;
      }
    }));

  sub.on("ready", () => {
    const mine = ++subscriptions;
    target = undefined;
    lose();
    void (async () => {
      try {
        const id = Number(await sub.call("CLIENT", "ID"));
        await sub.subscribe(CHANNEL);
        if (mine !== subscriptions) return;
        target = id;
        await arm();
      } catch {
        // The subscriber's next reconnect starts over.
      }
    })();
  });
  sub.on("close", () => {
    subscriptions++;
    target = undefined;
    lose();
  });
  opts.data.on("ready", () => {
    lose();
    void arm();
  });
  opts.data.on("close", lose);

  sub.on("messageBuffer", (channel: Buffer, payload: unknown) => {
    lastHeard = Date.now();
    if (channel.toString() !== CHANNEL) return;
    // A flush of the database arrives as a null instead of key names.
    if (!Array.isArray(payload)) return lose();
    handlers.changed(payload.map((k: Buffer) => k.toString()));
  });

  const heartbeat = setInterval(() => {
    if (!live) return;
    if (Date.now() - lastHeard > 2 * heartbeatMs) {
      lose();
      // Whatever the socket says, the subscriber is not hearing Redis: start it over.
      sub.disconnect(true);
      return;
    }
    sub.ping().then(
      () => (lastHeard = Date.now()),
      () => undefined,
    );
  }, heartbeatMs);
  heartbeat.unref();

  return {
    get live() {
      return live;
    },
    close() {
      closed = true;
      clearInterval(heartbeat);
      live = false;
      sub.disconnect();
    },
  };
}
