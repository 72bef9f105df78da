import { create, toBinary } from "@bufbuild/protobuf";
import { GetDeviceStateResponseSchema, type GetDeviceStateResponse } from "../../gen/medmesh/devices/v1/devices_pb.js";
import type { VersionedCache } from "../../platform/cache/versioned-cache.js";
import { withEncoding } from "../../platform/grpc/encoded.js";
import { logger as rootLogger, type Logger } from "../../platform/telemetry/logger.js";
import { toState, type CachedState } from "./model.js";
import type { DeviceStore } from "./store.js";
import { withTimeout } from "../../platform/lifecycle/with-timeout.js";

/** GetDeviceState's answer for a device, and whose device it is (for the access check). */
export interface StateAnswer {
  ownerId: string;
  /** Frozen, with its wire bytes attached (platform/grpc/encoded.ts). */
  response: GetDeviceStateResponse;
}

export interface StateCacheOptions {
  store: DeviceStore;
  /** Undefined turns caching off: every read goes to the database. */
  cache: VersionedCache | undefined;
  /** Keeps two deployments (or tests) on one Redis apart. */
  namespace: string;
  ttlMs: number;
  /** How long "no such device" is remembered. */
  negativeTtlMs: number;
  /**
   * A cache that does not answer within this is treated as down for that read; 0 sets no timer
   * (an in-process cache, which cannot hang: a timer per hit would be most of a hit's cost).
   */
  cacheTimeoutMs?: number;
  logger?: Logger;
}

const NO_DEVICE = "-";
/** Answers kept ready per device (the newest cached value of each), at most. */
const ANSWERS_KEPT = 10_000;

/**
 * Read-through cache of device states. Each device has a namespace of its own in the versioned
 * cache, and the worker bumps it after applying the device's events: a reader that loaded the
 * state before the bump stores it under the old version, where nobody reads it, so a stale
 * state is never put back over a fresh one. Concurrent misses for one device share one database
 * read. A cache that fails or is slow is passed over: the read goes to the database.
 */
export class StateCache {
  private readonly inflight = new Map<string, Promise<CachedState | undefined>>();
  /** Per device: the cached value last turned into an answer, and that answer. */
  private readonly answers = new Map<string, { value: string; answer: StateAnswer }>();
  private readonly log: Logger;
  private readonly timeoutMs: number;
  readonly counts = { hits: 0, misses: 0, loads: 0, cacheErrors: 0 };

  constructor(private readonly opts: StateCacheOptions) {
    this.log = (opts.logger ?? rootLogger).child({ component: "state-cache" });
    this.timeoutMs = opts.cacheTimeoutMs ?? 100;
  }

  private bounded<T>(p: Promise<T>): Promise<T> {
    return this.timeoutMs > 0 ? withTimeout(p, this.timeoutMs, () => cacheTimedOut(this.timeoutMs)) : p;
  }

  private ns(deviceId: string) {
    return `${this.opts.namespace}:${deviceId}`;
  }

  /**
   * GetDeviceState's answer, ready to send. A hit whose cached value is the one last answered
   * for this device (the common case: a state is read far more often than it changes) costs no
   * parse, no message and no encoding: the same frozen message and its bytes go out again.
   */
  async answer(deviceId: string): Promise<StateAnswer | undefined> {
    const found = await this.lookup(deviceId);
    if (typeof found !== "string") return found && answerOf(deviceId, found);
    const kept = this.answers.get(deviceId);
    if (kept !== undefined && kept.value === found) return kept.answer;
    const state = parseValue(found);
    if (!state) return undefined;
    const answer = answerOf(deviceId, state);
    this.answers.delete(deviceId);
    this.answers.set(deviceId, { value: found, answer });
    // Insertion order is age order: the first keys are the least recently renewed.
    if (this.answers.size > ANSWERS_KEPT) this.answers.delete(this.answers.keys().next().value!);
    return answer;
  }

  /** The cached value as stored (a hit), or the state read from the database (a miss). */
  private async lookup(deviceId: string): Promise<string | CachedState | undefined> {
    const cache = this.opts.cache;
    let version: string | undefined;
    if (cache) {
      // A copy known current in this process answers without a round trip or a timer.
      const held = cache.peek?.(this.ns(deviceId), "state");
      if (held !== undefined) {
        this.counts.hits++;
        return held;
      }
      try {
        const found = await this.bounded(cache.get(this.ns(deviceId), "state"));
        if (found.value !== undefined) {
          this.counts.hits++;
          return found.value;
        }
        version = found.version;
      } catch (err) {
        this.cacheFailed(err);
      }
    }
    this.counts.misses++;
    return this.load(deviceId, version);
  }

  /**
   * One database read for the misses of one device at one cache version. The shared read stays
   * shared until its answer is in the cache, not only while the query runs: a reader whose cache
   * lookup missed just before the answer was stored would otherwise read again (Redis answers a
   * connection's commands in order, so once the store is acknowledged no earlier lookup is still
   * out). Keyed by the version, so a read begun before the worker bumped it is never handed to a
   * reader who saw the bump. Without a version (the cache failed) a read is shared while it runs.
   */
  private load(deviceId: string, version: string | undefined): Promise<CachedState | undefined> {
    const key = `${deviceId} ${version ?? ""}`;
    const shared = this.inflight.get(key);
    if (shared) return shared;
    this.counts.loads++;
    const loading = this.opts.store.stateOf(deviceId).then((row) => {
      if (!row) return undefined;
      const out: CachedState = { ownerId: row.ownerId };
      if (row.state)
        out.state = {
          version: String(row.state.sequence),
          readings: row.state.readings,
          eventTime: row.state.event_time.getTime(),
          updateTime: row.state.updated_at.getTime(),
        };
      return out;
    });
    this.inflight.set(key, loading);
    const cache = this.opts.cache;
    const stored =
      cache && version !== undefined
        ? loading.then((loaded) => {
            const ttl = loaded ? this.opts.ttlMs : this.opts.negativeTtlMs;
            const value = loaded ? JSON.stringify(loaded) : NO_DEVICE;
            return this.bounded(cache.set(this.ns(deviceId), version, "state", value, ttl)).catch((err) =>
              this.cacheFailed(err),
            );
          })
        : loading;
    void stored.finally(() => this.inflight.delete(key)).catch(() => undefined);
    return loading;
  }

  /** After the device's state or registration changed: every cached answer for it is stale. */
  invalidate(deviceId: string): void {
    const cache = this.opts.cache;
    if (!cache) return;
    void withTimeout(cache.bump(this.ns(deviceId)), 1_000, () => cacheTimedOut(1_000)).catch((err) =>
      this.cacheFailed(err),
    );
  }

  private cacheFailed(err: unknown) {
    this.counts.cacheErrors++;
    // One line per hundred failures: a cache outage must not flood the log.
    if (this.counts.cacheErrors % 100 === 1)
      this.log.warn("the state cache failed; reading the database instead", { error: err as Error });
  }
}

function parseValue(value: string): CachedState | undefined {
  return value === NO_DEVICE ? undefined : (JSON.parse(value) as CachedState);
}

function answerOf(deviceId: string, state: CachedState): StateAnswer {
  const response = create(GetDeviceStateResponseSchema, { state: toState(deviceId, state) });
  const bytes = toBinary(GetDeviceStateResponseSchema, response);
  return { ownerId: state.ownerId, response: withEncoding(deepFreeze(response), bytes) };
}

/** Frozen through and through: an answer handed to many calls must not be changed by one. */
function deepFreeze<T extends object>(o: T): T {
  for (const v of Object.values(o)) if (typeof v === "object" && v !== null && !Object.isFrozen(v)) deepFreeze(v);
  return Object.freeze(o);
}

const cacheTimedOut = (ms: number) => new Error(`the cache did not answer within ${ms} ms`);
