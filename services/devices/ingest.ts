import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Admin } from "kafkajs";
import { DeviceEventRecordedSchema } from "../../gen/medmesh/events/v1/device_events_pb.js";
import type { DeviceEvent } from "../../gen/medmesh/devices/v1/devices_pb.js";
import { eventHeaders, eventKind, type EventEnvelope } from "../../platform/events/index.js";
import { logger as rootLogger, type Logger } from "../../platform/telemetry/logger.js";
import type { EventPublisher } from "./publisher.js";
import { encodeRecorded } from "./record-codec.js";
import type { DeviceStore } from "./store.js";

export const DEVICE_EVENT = eventKind(DeviceEventRecordedSchema);
const SOURCE = "/medmesh/devices";

/** The CloudEvent id of a device event: the same for every resend, so the worker sees one event. */
export const deviceEventId = (deviceId: string, sequence: bigint) => `${deviceId}/${sequence}`;

export type Outcome = "accepted" | "duplicate";

interface InFlight {
  clientId: string;
  done: Promise<void>;
  ok: boolean;
}

/**
 * What this process knows of one device's sequence. `acked` is the highest sequence such that it
 * and every one below it is held (acknowledged by Kafka, or applied); it is the only number ever
 * sent back as an acknowledgement. `reserved` is the highest sequence handed to the publisher.
 */
interface Ledger {
  acked: bigint;
  reserved: bigint;
  inflight: Map<bigint, InFlight>;
  /** Client ids of recently acknowledged sequences, to tell a resend from a reused sequence. */
  recent: Map<bigint, string>;
  revoked: boolean;
  loadedAt: number;
  /** The device id as the Kafka key, made once: the publisher's partitioner remembers it by this Buffer. */
  key: Buffer;
}

export interface IngestOptions {
  store: DeviceStore;
  publisher: EventPublisher;
  /** Answers whether the worker's group has caught up with everything in the topic as of now. */
  caughtUp: CatchUp;
  /** Longest an event may claim to lie in the future. */
  maxClockSkewMs: number;
  /** Largest event, encoded. */
  maxEventBytes: number;
  /** How long a device's revocation may take to reach this process. */
  registryRecheckMs?: number;
  logger?: Logger;
  now?: () => number;
}

/** Waits (bounded) until the consumer group has handled everything the topic held when called. */
export type CatchUp = (timeoutMs: number) => Promise<boolean>;

const RECENT_KEPT = 256;
const MAX_LEDGERS = 100_000;

const failedPrecondition = (m: string) => new ConnectError(m, Code.FailedPrecondition);
const invalid = (m: string) => new ConnectError(m, Code.InvalidArgument);

/**
 * Takes device events in: checks each, decides whether it is new, a resend or a mistake, and
 * publishes the new ones. `submit` resolves once the event is held (Kafka acknowledged it, or it
 * already was), and never before: that is what lets a caller acknowledge it.
 */
export class Ingest {
  private readonly ledgers = new Map<string, Promise<Ledger>>();
  /** The same ledgers once loaded, for answers that need no wait (the acknowledgement after each publish). */
  private readonly loaded = new Map<string, Ledger>();
  private readonly log: Logger;
  private readonly now: () => number;

  constructor(private readonly opts: IngestOptions) {
    this.log = (opts.logger ?? rootLogger).child({ component: "ingest" });
    this.now = opts.now ?? Date.now;
  }

  /** The highest contiguous sequence held for the device, as far as this process knows. */
  async acked(deviceId: string): Promise<bigint> {
    return (await this.ledger(deviceId)).acked;
  }

  /**
   * The same as `acked`, without waiting, when the device's ledger is loaded (always so once an
   * event of it was admitted); undefined otherwise.
   */
  ackedNow(deviceId: string): bigint | undefined {
    return this.loaded.get(deviceId)?.acked;
  }

  /** Forgets what is known of a device (it was revoked or deleted). */
  forget(deviceId: string) {
    this.ledgers.delete(deviceId);
    this.loaded.delete(deviceId);
  }

  private ledger(deviceId: string): Promise<Ledger> {
    const known = this.ledgers.get(deviceId);
    if (known) {
      // Refreshed now and then so a revocation made through another replica takes effect; the
      // refresh replaces the entry, so calls behind it wait for the one refresh, in order.
      return known.then((l) => {
        if (this.now() - l.loadedAt <= (this.opts.registryRecheckMs ?? 10_000)) return l;
        l.loadedAt = this.now();
        // Not taken without waiting until the refresh is in (admit's shortcut, below).
        this.loaded.delete(deviceId);
        const refreshed = this.refresh(deviceId, l);
        this.ledgers.set(deviceId, refreshed);
        refreshed.then(
          (fresh) => this.ledgers.get(deviceId) === refreshed && this.loaded.set(deviceId, fresh),
          () => this.ledgers.delete(deviceId),
        );
        return refreshed;
      });
    }
    const loading = this.load(deviceId);
    this.ledgers.set(deviceId, loading);
    loading.catch(() => this.ledgers.delete(deviceId));
    if (this.ledgers.size > MAX_LEDGERS) {
      // The oldest entries go; a device coming back reloads its baseline from the database.
      const oldest = this.ledgers.keys().next().value!;
      this.ledgers.delete(oldest);
      this.loaded.delete(oldest);
    }
    return loading;
  }

  private async load(deviceId: string): Promise<Ledger> {
    const view = await this.opts.store.ingestView(deviceId);
    if (!view) throw new ConnectError(`device ${deviceId} is not registered`, Code.NotFound);
    const l: Ledger = {
      acked: view.appliedSequence,
      reserved: view.appliedSequence,
      inflight: new Map(),
      recent: new Map(),
      revoked: view.revoked,
      loadedAt: this.now(),
      key: Buffer.from(deviceId),
    };
    // Only while it is still the ledger of record (a forget may have come in meanwhile).
    if (this.ledgers.has(deviceId)) this.loaded.set(deviceId, l);
    return l;
  }

  private async refresh(deviceId: string, l: Ledger): Promise<Ledger> {
    const view = await this.opts.store.ingestView(deviceId);
    if (!view) {
      this.forget(deviceId);
      throw new ConnectError(`device ${deviceId} is not registered`, Code.NotFound);
    }
    l.revoked = view.revoked;
    this.raiseTo(l, view.appliedSequence);
    return l;
  }

  private raiseTo(l: Ledger, applied: bigint) {
    if (applied > l.acked) {
      l.acked = applied;
      if (l.reserved < applied) l.reserved = applied;
    }
    this.advance(l);
  }

  /** Moves `acked` over every finished in-flight sequence right above it. */
  private advance(l: Ledger) {
    for (;;) {
      const next = l.inflight.get(l.acked + 1n);
      if (!next?.ok) {
        // An in-flight entry below acked is settled by the database having it.
        for (const s of l.inflight.keys()) if (s <= l.acked && l.inflight.get(s)!.ok) l.inflight.delete(s);
        return;
      }
      l.acked++;
      l.inflight.delete(l.acked);
      l.recent.set(l.acked, next.clientId);
      if (l.recent.size > RECENT_KEPT) l.recent.delete(l.recent.keys().next().value!);
    }
  }

  /**
   * Checks what does not depend on the device's history: the caller, the time, the size, unknown
   * fields. Throws the error the caller gets for the whole call; answers the event as it will be
   * published (encoded once: its size is what is checked).
   */
  check(callerDeviceId: string, e: DeviceEvent, index?: number): Uint8Array {
    const at = index === undefined ? "event" : `events[${index}]`;
    if (e.deviceId !== callerDeviceId)
      throw new ConnectError(
        `${at}.device_id: a device may publish only its own events (you are ${callerDeviceId}, the event is for ${e.deviceId})`,
        Code.PermissionDenied,
      );
    if (hasUnknownFields(e))
      throw invalid(
        `${at}: carries fields this server does not know; send only the fields of medmesh.devices.v1.DeviceEvent`,
      );
    const time = timestampMs(e.eventTime!);
    if (time > this.now() + this.opts.maxClockSkewMs)
      throw invalid(
        `${at}.event_time: ${new Date(time).toISOString()} is more than ${Math.round(this.opts.maxClockSkewMs / 1000)} s in the future; check the device's clock`,
      );
    const payload = encodeRecorded(e, this.now());
    if (payload.byteLength > this.opts.maxEventBytes)
      throw invalid(
        `${at}: is ${payload.byteLength} bytes encoded, more than the ${this.opts.maxEventBytes} bytes an event may have`,
      );
    return payload;
  }

  /**
   * `admitNow` is the common case decided without waiting: the device's ledger is loaded and
   * fresh, and the event is the next one (or fills a hole) and not in flight, so it is published
   * exactly as `admit` would. Anything else is undefined, for `admit` (which may wait for the
   * database or the worker group). It saves an async decision, its promise and its turn, per event.
   */
  admitNow(e: DeviceEvent, payload: Uint8Array, traceparent?: string): { held: Promise<Outcome> } | undefined {
    const l = this.loaded.get(e.deviceId);
    if (l === undefined || l.revoked || this.now() - l.loadedAt > (this.opts.registryRecheckMs ?? 10_000))
      return undefined;
    const seq = e.sequence;
    if (seq <= l.acked || seq > l.reserved + 1n || l.inflight.has(seq)) return undefined;
    return quiet(this.publish(l, e, payload, traceparent));
  }

  /**
   * Takes one checked event and decides what it is. Resolves, once decided, with `held`, which
   * resolves when the event is held and never before; the decision rejects with the status the
   * caller gets (failed_precondition for a gap or a reused sequence, permission_denied for a
   * revoked device), `held` with unavailable when Kafka did not take it. Decide the events of one
   * device one after the other, in the order the device sent them; holding may overlap.
   */
  async admit(
    e: DeviceEvent,
    payload: Uint8Array,
    traceparent?: string,
    recheck = true,
  ): Promise<{ held: Promise<Outcome> }> {
    // A loaded ledger that needs no refresh is taken as it is: no promise chain per event.
    const ready = this.loaded.get(e.deviceId);
    const l =
      ready !== undefined && this.now() - ready.loadedAt <= (this.opts.registryRecheckMs ?? 10_000)
        ? ready
        : await this.ledger(e.deviceId);
    if (l.revoked)
      throw new ConnectError(`device ${e.deviceId} has been revoked and may no longer publish`, Code.PermissionDenied);
    const seq = e.sequence;
    const pending = l.inflight.get(seq);
    if (pending) {
      if (pending.clientId !== e.clientId) throw this.reused(e, pending.clientId);
      return quiet(pending.done.then(() => "duplicate" as const));
    }
    if (seq <= l.acked) {
      const before = l.recent.get(seq) ?? (await this.opts.store.clientIdAt(e.deviceId, seq));
      if (before !== undefined && before !== e.clientId) throw this.reused(e, before);
      return { held: Promise.resolve("duplicate") };
    }
    if (seq > l.reserved + 1n) {
      if (recheck) {
        // What looks like a gap may be events this process does not know of: acknowledged before
        // a restart, or by another replica the device was connected to, and still on their way
        // through Kafka to the database. Decide only once the worker group has caught up, never
        // by guessing. Gaps are mistakes, so this slow path is rare.
        const caught = await this.opts.caughtUp(5_000);
        if (!caught)
          throw new ConnectError(
            "the server is still catching up with this device's earlier events; send again shortly",
            Code.Unavailable,
          );
        const view = await this.opts.store.ingestView(e.deviceId);
        if (view) this.raiseTo(l, view.appliedSequence);
        return this.admit(e, payload, traceparent, false);
      }
      throw failedPrecondition(
        `event.sequence: ${seq} skips ${l.reserved + 1n}${l.reserved + 2n < seq ? `..${seq - 1n}` : ""}; the server holds up to ${l.acked}, send the events after it first`,
      );
    }
    return quiet(this.publish(l, e, payload, traceparent));
  }

  private reused(e: DeviceEvent, clientId: string) {
    return failedPrecondition(
      `event.sequence: ${e.sequence} was already used by the event with client_id "${clientId}"; a sequence number may not be reused for another event`,
    );
  }

  private publish(l: Ledger, e: DeviceEvent, payload: Uint8Array, traceparent?: string): Promise<Outcome> {
    const seq = e.sequence;
    if (seq > l.reserved) l.reserved = seq;
    const time = new Date(this.now());
    const envelope: EventEnvelope = {
      id: deviceEventId(e.deviceId, seq),
      key: e.deviceId,
      type: DEVICE_EVENT.type,
      source: SOURCE,
      time,
      contentType: DEVICE_EVENT.contentType,
      payload,
    };
    if (traceparent) envelope.traceparent = traceparent;
    const entry: InFlight = { clientId: e.clientId, ok: false, done: undefined as unknown as Promise<void> };
    entry.done = this.opts.publisher
      .publish(e.deviceId, {
        key: l.key,
        // The encoded bytes themselves (a view when they are not a Buffer): nothing writes to them after this.
        value: Buffer.isBuffer(payload) ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength),
        headers: eventHeaders(envelope),
        timestamp: String(time.getTime()),
      })
      .then(
        () => {
          entry.ok = true;
          this.advance(l);
        },
        (err: Error) => {
          // Not held: the device must send it again, and nothing above it is acknowledged until it does.
          if (l.inflight.get(seq) === entry) l.inflight.delete(seq);
          if (l.reserved >= seq) l.reserved = seq - 1n > l.acked ? seq - 1n : l.acked;
          throw new ConnectError(
            `event ${seq} was not stored (${err.message}); it is not acknowledged, send it again`,
            Code.Unavailable,
          );
        },
      );
    l.inflight.set(seq, entry);
    return entry.done.then(() => "accepted" as const);
  }
}

/** Marks a promise handled (its rejection still reaches whoever awaits it) and wraps it. */
function quiet(held: Promise<Outcome>): { held: Promise<Outcome> } {
  held.catch(() => undefined);
  return { held };
}

function hasUnknownFields(m: object): boolean {
  return ((m as { $unknown?: unknown[] }).$unknown?.length ?? 0) > 0;
}

/**
 * A CatchUp over the Kafka admin API: the topic's end offsets now, then the group's committed
 * offsets polled until they reach them (or the time runs out).
 */
export function groupCatchUp(admin: Admin, topic: string, groupId: string): CatchUp {
  return async (timeoutMs) => {
    const until = Date.now() + timeoutMs;
    const ends = await admin.fetchTopicOffsets(topic);
    for (;;) {
      const [committed] = await admin.fetchOffsets({ groupId, topics: [topic] });
      const at = new Map((committed?.partitions ?? []).map((p) => [p.partition, BigInt(p.offset)]));
      const behind = ends.some((e) => BigInt(e.high) > 0n && (at.get(e.partition) ?? -1n) < BigInt(e.high));
      if (!behind) return true;
      if (Date.now() >= until) return false;
      await new Promise((r) => setTimeout(r, 100));
    }
  };
}
