import type { DescMessage } from "@bufbuild/protobuf";
import {
  GetDeviceStateRequestSchema,
  PublishEventsRequestSchema,
  StreamEventsRequestSchema,
  type DeviceEvent,
  type GetDeviceStateRequest,
  type PublishEventsRequest,
  type StreamEventsRequest,
} from "../../gen/medmesh/devices/v1/devices_pb.js";
import type { ValidationShortcut } from "../../platform/grpc/interceptors/validation.js";

/*
 * The contract's rules for the messages every device event and every state read carries, written
 * out by hand (devices.proto). Walking them reflectively through protovalidate was about 7% of
 * the ingest's CPU per streamed event. These only say yes when every rule holds; anything else
 * goes to protovalidate, which writes the refusal, so the statuses and sentences stay its own.
 * event-rules.test.ts holds them to protovalidate's answers.
 */

// string.uuid, as protovalidate matches it: either case.
const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
// readings: keys.string.pattern.
const READING_NAME = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;
const MAX_SEQUENCE = 9_007_199_254_740_991n;
const MAX_CLIENT_ID = 64;
const MAX_READINGS = 64;

/** Whether a DeviceEvent keeps every rule of devices.proto. */
export function plainlyValidEvent(e: DeviceEvent | undefined): boolean {
  if (e === undefined || e.eventTime === undefined) return false;
  if (e.sequence < 1n || e.sequence > MAX_SEQUENCE) return false;
  // max_len counts code points; UTF-16 units are never fewer, so this is never more lenient.
  const idLength = e.clientId.length;
  if (idLength < 1 || idLength > MAX_CLIENT_ID) return false;
  if (!UUID.test(e.deviceId)) return false;
  let pairs = 0;
  for (const name in e.readings) {
    if (++pairs > MAX_READINGS) return false;
    if (!READING_NAME.test(name) || !Number.isFinite(e.readings[name])) return false;
  }
  return true;
}

const streamed = (m: StreamEventsRequest) => plainlyValidEvent(m.event);

const batch = (m: PublishEventsRequest) => {
  // repeated.min_items 1, max_items 10000.
  if (m.events.length < 1 || m.events.length > 10_000) return false;
  for (const e of m.events) if (!plainlyValidEvent(e)) return false;
  return true;
};

const stateRead = (m: GetDeviceStateRequest) => UUID.test(m.deviceId);

/** For meshInterceptors({ validationShortcuts }): the hot request types of DeviceService. */
export const deviceValidationShortcuts: ReadonlyMap<DescMessage, ValidationShortcut> = new Map<
  DescMessage,
  ValidationShortcut
>([
  [StreamEventsRequestSchema, streamed as ValidationShortcut],
  [PublishEventsRequestSchema, batch as ValidationShortcut],
  [GetDeviceStateRequestSchema, stateRead as ValidationShortcut],
]);
