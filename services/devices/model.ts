import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  DeviceSchema,
  DeviceStateSchema,
  StoredEventSchema,
  type Device,
  type DeviceState,
  type StoredEvent,
} from "../../gen/medmesh/devices/v1/devices_pb.js";
import type { DeviceRow, EventRow } from "./store.js";

export function toDevice(row: DeviceRow): Device {
  return create(DeviceSchema, {
    id: row.id,
    ownerId: row.owner_id,
    name: row.name,
    type: row.type,
    createTime: timestampFromDate(row.created_at),
    ...(row.revoked_at ? { revokeTime: timestampFromDate(row.revoked_at) } : {}),
    apiKeyPrefix: row.api_key_prefix,
  });
}

/** What GetDeviceState needs of a device: who owns it, and its state if anything was applied. */
export interface CachedState {
  ownerId: string;
  state?: { version: string; readings: Record<string, number>; eventTime: number; updateTime: number };
}

export function toState(deviceId: string, cached: CachedState): DeviceState {
  const s = cached.state;
  if (!s) return create(DeviceStateSchema, { deviceId, version: 0n });
  return create(DeviceStateSchema, {
    deviceId,
    version: BigInt(s.version),
    readings: s.readings,
    eventTime: timestampFromDate(new Date(s.eventTime)),
    updateTime: timestampFromDate(new Date(s.updateTime)),
  });
}

export function toStoredEvent(row: EventRow): StoredEvent {
  return create(StoredEventSchema, {
    deviceId: row.device_id,
    sequence: BigInt(row.sequence),
    clientId: row.client_id,
    eventTime: timestampFromDate(row.event_time),
    readings: row.readings,
    applyTime: timestampFromDate(row.applied_at),
  });
}

/** Where the previous page of a device's history stopped, bound to the device and the range. */
interface EventCursor {
  time: Date;
  sequence: string;
}

const bindingOf = (deviceId: string, start?: Date, end?: Date) =>
  `${deviceId}|${start?.getTime() ?? ""}|${end?.getTime() ?? ""}`;

export function encodeEventCursor(c: EventCursor, deviceId: string, start?: Date, end?: Date): string {
  return Buffer.from(
    JSON.stringify({ v: 1, t: c.time.toISOString(), s: c.sequence, b: bindingOf(deviceId, start, end) }),
  ).toString("base64url");
}

export function decodeEventCursor(token: string, deviceId: string, start?: Date, end?: Date): EventCursor | undefined {
  if (token === "") return undefined;
  const bad = () => new ConnectError("page_token is not a token issued by this service", Code.InvalidArgument);
  let p: { v?: unknown; t?: unknown; s?: unknown; b?: unknown };
  try {
    p = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw bad();
  }
  if (p?.v !== 1 || typeof p.t !== "string" || typeof p.s !== "string" || !/^\d{1,19}$/.test(p.s)) throw bad();
  const time = new Date(p.t);
  if (Number.isNaN(time.getTime())) throw bad();
  if (p.b !== bindingOf(deviceId, start, end))
    throw new ConnectError(
      "page_token was issued for another device or time range; start again without it",
      Code.InvalidArgument,
    );
  return { time, sequence: p.s };
}
