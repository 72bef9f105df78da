import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { context, defaultTextMapSetter } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { Role } from "../../gen/medmesh/access/v1/access_pb.js";
import {
  DeviceService,
  EventOutcome,
  EventResultSchema,
  StreamEventsResponseSchema,
  type EventResult,
  type StreamEventsResponse,
} from "../../gen/medmesh/devices/v1/devices_pb.js";
import type { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import type { ServiceToken } from "../../platform/auth/service-token.js";
import { callerOf } from "../../platform/grpc/caller.js";
import { decodePageToken, encodePageToken } from "../../platform/grpc/page-token.js";
import type { Client } from "@connectrpc/connect";
import type { Principal } from "../../platform/grpc/interceptors/access.js";
import { logger as rootLogger, type Logger } from "../../platform/telemetry/logger.js";
import type { Ingest } from "./ingest.js";
import { decodeEventCursor, encodeEventCursor, toDevice, toStoredEvent } from "./model.js";
import type { StateCache } from "./state-cache.js";
import type { DeviceRow, DeviceStore } from "./store.js";

export interface DeviceServiceOptions {
  store: DeviceStore;
  ingest: Ingest;
  states: StateCache;
  identity: Client<typeof IdentityService>;
  token: ServiceToken;
  /** Events one PublishEvents may carry. */
  maxBatch: number;
  /** Unacknowledged events one StreamEvents may have in flight before the server stops reading. */
  maxInFlight: number;
  logger?: Logger;
}

const w3c = new W3CTraceContextPropagator();

/** The trace context of the call, to travel with the events it publishes. */
function currentTraceparent(): string | undefined {
  const carrier: Record<string, string> = {};
  w3c.inject(context.active(), carrier, defaultTextMapSetter);
  return carrier.traceparent;
}

const isAdmin = (p: Principal) => p.role === Role.ADMIN;

/** An answer stream fed from elsewhere: acknowledgements are written as publishes finish, not as events are read. */
class Channel<T> {
  private items: T[] = [];
  private waiting: (() => void) | undefined;
  private ended = false;
  private error: unknown;

  push(item: T) {
    this.items.push(item);
    this.wake();
  }
  end(error?: unknown) {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    this.wake();
  }
  private wake() {
    const w = this.waiting;
    this.waiting = undefined;
    w?.();
  }
  async *drain(): AsyncGenerator<T> {
    for (;;) {
      if (this.items.length > 0) {
        yield this.items.shift()!;
        continue;
      }
      if (this.ended) {
        if (this.error !== undefined) throw this.error;
        return;
      }
      await new Promise<void>((r) => (this.waiting = r));
    }
  }
}

export function deviceService(opts: DeviceServiceOptions): ServiceImpl<typeof DeviceService> {
  const { store, ingest, states, identity, token } = opts;
  const log = (opts.logger ?? rootLogger).child({ component: "devices" });

  /** The device, if the caller may manage it; others' devices are not found, so ids cannot be probed. */
  async function managed(id: string, ctx: HandlerContext): Promise<DeviceRow> {
    const caller = callerOf(ctx);
    const row = await store.device(id);
    if (!row || (row.owner_id !== caller.subject && !isAdmin(caller)))
      throw new ConnectError(`device ${id} not found`, Code.NotFound);
    return row;
  }

  /** Whether the caller may read a device owned by `ownerId`: the device itself, its owner, an admin. */
  function mayRead(caller: Principal, deviceId: string, ownerId: string) {
    if (caller.kind === "device") return caller.subject === deviceId;
    return caller.subject === ownerId || isAdmin(caller);
  }

  return {
    async registerDevice(req, ctx) {
      const owner = callerOf(ctx).subject;
      const id = randomUUID();
      const issued = await token.call((headers) => identity.issueDeviceApiKey({ deviceId: id }, { headers }));
      let row: DeviceRow;
      try {
        row = await store.insertDevice({
          id,
          ownerId: owner,
          name: req.name,
          type: req.type,
          apiKeyPrefix: issued.apiKey?.prefix ?? "",
        });
      } catch (err) {
        // A key for a device that does not exist would be refused at ingest anyway; revoke it all the same.
        await token
          .call((headers) => identity.revokeDeviceApiKeys({ deviceId: id }, { headers }))
          .catch(() => undefined);
        throw err;
      }
      // A "no such device" answer may be cached for this id.
      states.invalidate(id);
      log.info("device registered", { device_id: id, owner });
      return { device: toDevice(row), apiKey: issued.key };
    },

    async getDevice(req, ctx) {
      return { device: toDevice(await managed(req.id, ctx)) };
    },

    async listDevices(req, ctx) {
      const caller = callerOf(ctx);
      const size = req.pageSize || 50;
      // Bound to whose list it is: a token from an admin's list is no use in someone else's.
      const scope = { owner: isAdmin(caller) ? "*" : caller.subject };
      const before = decodePageToken(req.pageToken, scope);
      const rows = await store.devices(isAdmin(caller) ? undefined : caller.subject, before, size + 1);
      const page = rows.slice(0, size);
      return {
        devices: page.map(toDevice),
        nextPageToken: rows.length > size ? encodePageToken(Number(page[page.length - 1]!.seq), scope) : "",
      };
    },

    async revokeDevice(req, ctx) {
      const row = await managed(req.id, ctx);
      await token.call((headers) => identity.revokeDeviceApiKeys({ deviceId: row.id }, { headers }));
      const revoked = (await store.revokeDevice(row.id, new Date())) ?? row;
      ingest.forget(row.id);
      return { device: toDevice(revoked) };
    },

    async deleteDevice(req, ctx) {
      const row = await managed(req.id, ctx);
      await token.call((headers) => identity.revokeDeviceApiKeys({ deviceId: row.id }, { headers }));
      await store.deleteDevice(row.id);
      ingest.forget(row.id);
      states.invalidate(row.id);
      return {};
    },

    async *streamEvents(requests, ctx) {
      const caller = callerOf(ctx);
      const traceparent = currentTraceparent();
      const out = new Channel<StreamEventsResponse>();
      let inflight = 0;
      let slotFreed: (() => void) | undefined;
      let lastAck = -1n;
      let failed = false;
      const settled = () => {
        inflight--;
        const w = slotFreed;
        slotFreed = undefined;
        w?.();
      };
      const acknowledge = (deviceId: string, acked: bigint) => {
        if (acked > lastAck && !failed) {
          lastAck = acked;
          out.push(create(StreamEventsResponseSchema, { ackedSequence: acked, deviceId }));
        }
      };
      const reading = (async () => {
        for await (const req of requests) {
          if (failed) return;
          const e = req.event!;
          const payload = ingest.check(caller.subject, e);
          // Backpressure: with this many events unacknowledged the stream is not read further,
          // so HTTP/2 flow control holds the device back.
          while (inflight >= opts.maxInFlight) await new Promise<void>((r) => (slotFreed = r));
          const { held } = ingest.admitNow(e, payload, traceparent) ?? (await ingest.admit(e, payload, traceparent));
          inflight++;
          held.then(
            // Acknowledged before the slot is freed, so the last acknowledgement precedes the end of the stream.
            // One publish settles many events at once: the first of them carries the highest
            // sequence, and the others find nothing new to say.
            () => {
              const now = ingest.ackedNow(e.deviceId);
              if (now !== undefined) {
                acknowledge(e.deviceId, now);
                settled();
                return;
              }
              // The ledger was let go meanwhile (revoked, or evicted among very many devices): ask for it.
              ingest
                .acked(e.deviceId)
                .then((acked) => acknowledge(e.deviceId, acked))
                .then(settled, settled);
            },
            (err: unknown) => {
              settled();
              failed = true;
              out.end(err);
            },
          );
        }
        while (inflight > 0) await new Promise<void>((r) => (slotFreed = r));
      })();
      reading.then(
        () => out.end(),
        (err: unknown) => {
          failed = true;
          out.end(err);
        },
      );
      yield* out.drain();
    },

    async publishEvents(req, ctx) {
      const caller = callerOf(ctx);
      if (req.events.length > opts.maxBatch)
        throw new ConnectError(
          `events: ${req.events.length} events is more than the ${opts.maxBatch} one batch may carry; split the batch`,
          Code.InvalidArgument,
        );
      const payloads = req.events.map((e, i) => ingest.check(caller.subject, e, i));
      const traceparent = currentTraceparent();
      const results: EventResult[] = req.events.map((e) =>
        create(EventResultSchema, { sequence: e.sequence, outcome: EventOutcome.NOT_TRIED }),
      );
      const helds: Array<Promise<void>> = [];
      let unstored: ConnectError | undefined;
      for (let i = 0; i < req.events.length; i++) {
        const e = req.events[i]!;
        let held;
        try {
          ({ held } =
            ingest.admitNow(e, payloads[i]!, traceparent) ?? (await ingest.admit(e, payloads[i]!, traceparent)));
        } catch (err) {
          const error = ConnectError.from(err);
          // A refusal of the device as a whole is the call's answer, not an event's.
          if (error.code === Code.PermissionDenied || error.code === Code.NotFound || error.code === Code.Unavailable)
            throw error;
          results[i]!.outcome = EventOutcome.REJECTED;
          results[i]!.message = error.rawMessage;
          break;
        }
        helds.push(
          held.then(
            (outcome) => {
              results[i]!.outcome = outcome === "accepted" ? EventOutcome.ACCEPTED : EventOutcome.DUPLICATE;
            },
            (err: unknown) => {
              unstored ??= ConnectError.from(err);
              results[i]!.outcome = EventOutcome.REJECTED;
              results[i]!.message = ConnectError.from(err).rawMessage;
            },
          ),
        );
      }
      await Promise.all(helds);
      const anyHeld = results.some((r) => r.outcome === EventOutcome.ACCEPTED || r.outcome === EventOutcome.DUPLICATE);
      // Nothing could be stored (Kafka unreachable): say so as the call's status, which clients retry.
      if (unstored && !anyHeld) throw unstored;
      return { results, ackedSequence: req.events.length > 0 ? await ingest.acked(caller.subject) : 0n };
    },

    async getDeviceState(req, ctx) {
      const caller = callerOf(ctx);
      const found = await states.answer(req.deviceId);
      if (!found || !mayRead(caller, req.deviceId, found.ownerId))
        throw new ConnectError(`device ${req.deviceId} not found`, Code.NotFound);
      return found.response;
    },

    async listDeviceEvents(req, ctx) {
      const caller = callerOf(ctx);
      const device = await store.device(req.deviceId);
      if (!device || !mayRead(caller, req.deviceId, device.owner_id))
        throw new ConnectError(`device ${req.deviceId} not found`, Code.NotFound);
      const start = req.startTime ? timestampDate(req.startTime) : undefined;
      const end = req.endTime ? timestampDate(req.endTime) : undefined;
      if (start && end && start >= end)
        throw new ConnectError("invalid request: end_time: must be after start_time", Code.InvalidArgument);
      const after = decodeEventCursor(req.pageToken, req.deviceId, start, end);
      const size = req.pageSize || 100;
      const rows = await store.events(req.deviceId, { start, end }, after, size + 1);
      const page = rows.slice(0, size);
      const last = page[page.length - 1];
      return {
        events: page.map(toStoredEvent),
        nextPageToken:
          rows.length > size && last
            ? encodeEventCursor({ time: last.event_time, sequence: String(last.sequence) }, req.deviceId, start, end)
            : "",
      };
    },
  };
}
