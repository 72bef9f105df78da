import { Redis } from "ioredis";
import { fromBinary } from "@bufbuild/protobuf";
import { NotificationSchema, type Notification } from "../../gen/medmesh/notifications/v1/notifications_pb.js";
import { logger } from "../../platform/telemetry/logger.js";
import { notificationBytes, rememberEncoding } from "./encoding.js";
import { toNotification } from "./model.js";
import type { NotificationStore } from "./store.js";

const log = logger.child({ component: "notifications-feed" });

/** A new notification, as it travels between replicas: who, its number, the message itself. */
interface NewNotification {
  userId: string;
  seq: number;
  notification: Notification;
}

/** Notifications a user marked read (MarkRead's ids, or MarkAllRead's bound), for their streams. */
export interface ReadMarker {
  userId: string;
  ids: string[];
  /** MarkAllRead: everything up to this number; 0 for MarkRead. */
  allUpTo: number;
}

type FeedMessage = NewNotification | ReadMarker;

const isReadMarker = (m: FeedMessage): m is ReadMarker => "ids" in m;

/** Carries every new notification to every replica (each keeps the ones its subscribers want). */
export interface FeedBus {
  publish(m: FeedMessage): Promise<void>;
  /** The one listener of this process. */
  listen(onMessage: (m: FeedMessage) => void): Promise<void>;
  close(): Promise<void>;
}

/** One replica: the message goes straight to this process's listener. */
export function inProcessBus(): FeedBus {
  let listener: ((m: FeedMessage) => void) | undefined;
  return {
    async publish(m) {
      listener?.(m);
    },
    async listen(fn) {
      listener = fn;
    },
    async close() {
      listener = undefined;
    },
  };
}

/**
 * Several replicas: Redis pub/sub on one channel per schema. A message is at most a few hundred
 * bytes (the protobuf notification, base64), so subscribers need no database read for it. Pub/sub
 * does not keep messages for a replica that was disconnected: a subscriber notices the gap by the
 * numbers and reads what it missed from the table, and a reconnect reads the table anyway.
 */
export function redisBus(url: string, channel: string): FeedBus {
  const pub = new Redis(url, { maxRetriesPerRequest: 2, enableOfflineQueue: true });
  const sub = new Redis(url, { maxRetriesPerRequest: null, enableOfflineQueue: true });
  for (const c of [pub, sub]) c.on("error", (err: Error) => log.warn("redis feed connection", { error: err.message }));
  return {
    async publish(m) {
      if (isReadMarker(m)) {
        await pub.publish(channel, JSON.stringify({ u: m.userId, r: m.ids, a: m.allUpTo }));
        return;
      }
      const data = Buffer.from(notificationBytes(m.notification)).toString("base64");
      await pub.publish(channel, JSON.stringify({ u: m.userId, s: m.seq, d: data }));
    },
    async listen(fn) {
      sub.on("message", (ch: string, raw: string) => {
        if (ch !== channel) return;
        try {
          const j = JSON.parse(raw) as { u: string; s: number; d: string; r?: string[]; a?: number };
          if (j.r) return fn({ userId: j.u, ids: j.r, allUpTo: Number(j.a ?? 0) });
          const bytes = Buffer.from(j.d, "base64");
          const notification = fromBinary(NotificationSchema, bytes);
          rememberEncoding(notification, bytes);
          fn({ userId: j.u, seq: j.s, notification });
        } catch (err) {
          log.warn("unreadable feed message ignored", { error: (err as Error).message });
        }
      });
      await sub.subscribe(channel);
    },
    async close() {
      sub.disconnect();
      pub.disconnect();
    },
  };
}

/** One Subscribe call: notifications wait here, in order, until the call takes them. */
export class Subscriber {
  /** The highest number handed out (or known to be before what this call wants). */
  last = 0;
  private readonly pending = new Map<number, Notification>();
  /** Reads reported by the bus and not yet told to the call (made only when one comes). */
  private reads: { ids: string[]; allUpTo: number } | undefined;
  private gap = false;
  private wake: (() => void) | undefined;

  constructor(
    readonly userId: string,
    private readonly store: NotificationStore,
    private readonly onClose?: (s: Subscriber) => void,
  ) {}

  /** The call is over: the feed forgets it. */
  close(): void {
    this.onClose?.(this);
  }

  offer(seq: number, n: Notification): void {
    if (seq <= this.last) return;
    if (this.pending.size < 1000) this.pending.set(seq, n);
    else this.gap = true; // a slow reader: read from the table instead of growing without bound
    this.wake?.();
  }

  offerRead(ids: string[], allUpTo: number): void {
    const r = (this.reads ??= { ids: [], allUpTo: 0 });
    r.ids.push(...ids);
    r.allUpTo = Math.max(r.allUpTo, allUpTo);
    this.wake?.();
  }

  /**
   * The next notifications in number order, or else the reads made since the last call; waits
   * for either; undefined once the signal aborts.
   */
  async next(signal: AbortSignal): Promise<Notification[] | { ids: string[]; allUpTo: number } | undefined> {
    for (;;) {
      if (signal.aborted) return undefined;
      const out: Notification[] = [];
      while (this.pending.has(this.last + 1)) {
        const n = this.pending.get(this.last + 1)!;
        this.pending.delete(this.last + 1);
        this.last++;
        out.push(n);
      }
      for (const seq of this.pending.keys()) if (seq <= this.last) this.pending.delete(seq);
      if (out.length) return out;
      if (this.reads) {
        const reads = this.reads;
        this.reads = undefined;
        return reads;
      }
      if (this.pending.size > 0 || this.gap) {
        // Numbers are consecutive per user and commit in order, so a later one arriving first
        // means the earlier one is in the table already (its message was lost or is late).
        this.gap = false;
        const rows = await this.store.feedAfter(this.userId, this.last, 500);
        if (rows.length) {
          this.last = Number(rows[rows.length - 1]!.seq);
          return rows.map(toNotification);
        }
        // Nothing in the table yet: hold on to what waits and sleep until more comes.
      }
      await new Promise<void>((resolve) => {
        const done = () => {
          signal.removeEventListener("abort", done);
          this.wake = undefined;
          resolve();
        };
        signal.addEventListener("abort", done, { once: true });
        this.wake = done;
      });
    }
  }
}

/** The subscribers of this replica, by user, fed from the bus. */
export class Feed {
  private readonly byUser = new Map<string, Set<Subscriber>>();
  delivered = 0;

  constructor(
    private readonly store: NotificationStore,
    private readonly bus: FeedBus,
  ) {}

  async start(): Promise<void> {
    await this.bus.listen((m) => {
      const subs = this.byUser.get(m.userId);
      if (!subs) return;
      if (isReadMarker(m)) for (const s of subs) s.offerRead(m.ids, m.allUpTo);
      else for (const s of subs) s.offer(m.seq, m.notification);
    });
  }

  /** Tells every replica's subscribers; a failure only delays them (they read the table on reconnect or gap). */
  announce(n: Notification, userId: string): void {
    this.bus
      .publish({ userId, seq: Number(n.sequence), notification: n })
      .catch((err: Error) => log.warn("could not announce a notification", { error: err.message }));
  }

  /** Tells the user's streams on every replica what was marked read; a failure only leaves their count stale. */
  announceRead(m: ReadMarker): void {
    this.bus.publish(m).catch((err: Error) => log.warn("could not announce a read", { error: err.message }));
  }

  subscribe(userId: string): Subscriber {
    const s = new Subscriber(userId, this.store, this.forget);
    let set = this.byUser.get(userId);
    if (!set) this.byUser.set(userId, (set = new Set()));
    set.add(s);
    return s;
  }

  /** One function for every subscriber's close, rather than a closure each. */
  private readonly forget = (s: Subscriber) => {
    const set = this.byUser.get(s.userId);
    if (!set) return;
    set.delete(s);
    if (set.size === 0) this.byUser.delete(s.userId);
  };

  subscribers(): number {
    let n = 0;
    for (const s of this.byUser.values()) n += s.size;
    return n;
  }

  close(): Promise<void> {
    return this.bus.close();
  }
}
