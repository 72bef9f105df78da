import { randomUUID } from "node:crypto";
import type { IHeaders, KafkaMessage, Message } from "kafkajs";

/**
 * One event as the mesh sees it, independent of Kafka. The payload is opaque bytes (a protobuf
 * message in practice); contentType names the message so a consumer can decode it without
 * guessing from the topic.
 */
export interface EventEnvelope {
  /** Unique per event; the consumer's inbox deduplicates on it. */
  id: string;
  /** Reverse-DNS, versioned: medmesh.document.uploaded.v1 */
  type: string;
  /** The producing context as a URI reference: /medmesh/documents */
  source: string;
  time: Date;
  /** Aggregate id; the Kafka key, so every event of one aggregate lands on one partition in order. */
  key: string;
  payload: Uint8Array;
  /** application/protobuf; proto=<full message name> */
  contentType: string;
  /** W3C trace context of the operation that produced the event. */
  traceparent?: string;
  tracestate?: string;
}

/** What a producer supplies; id and time are filled in when absent. */
export type NewEvent = Omit<EventEnvelope, "id" | "time"> & { id?: string; time?: Date };

const SPEC_VERSION = "1.0";

/** CloudEvents Kafka binary binding header names, plus W3C trace context. */
const EventHeaderNames = {
  specversion: "ce_specversion",
  id: "ce_id",
  type: "ce_type",
  source: "ce_source",
  time: "ce_time",
  contentType: "content-type",
  traceparent: "traceparent",
  tracestate: "tracestate",
} as const;

export function protobufContentType(fullMessageName: string): string {
  return `application/protobuf; proto=${fullMessageName}`;
}

export function newEvent(e: NewEvent): EventEnvelope {
  return { ...e, id: e.id ?? randomUUID(), time: e.time ?? new Date() };
}

/** The Kafka headers of an event, as strings (what the outbox stores and the relay sends). */
export function eventHeaders(e: EventEnvelope): Record<string, string> {
  const h: Record<string, string> = {
    [EventHeaderNames.specversion]: SPEC_VERSION,
    [EventHeaderNames.id]: e.id,
    [EventHeaderNames.type]: e.type,
    [EventHeaderNames.source]: e.source,
    [EventHeaderNames.time]: e.time.toISOString(),
    [EventHeaderNames.contentType]: e.contentType,
  };
  if (e.traceparent) h[EventHeaderNames.traceparent] = e.traceparent;
  if (e.tracestate) h[EventHeaderNames.tracestate] = e.tracestate;
  return h;
}

export function toKafkaMessage(e: EventEnvelope): Message {
  return {
    key: e.key,
    value: Buffer.from(e.payload.buffer, e.payload.byteOffset, e.payload.byteLength),
    headers: eventHeaders(e),
    timestamp: String(e.time.getTime()),
  };
}

/**
 * A message that can never be handled, whatever the number of retries: it goes straight to the
 * dead-letter topic with `reason`.
 */
export class PoisonMessageError extends Error {
  constructor(readonly reason: string) {
    super(`poison message: ${reason}`);
    this.name = "PoisonMessageError";
  }
}

// RFC 3339 requires a full date, a time and an offset (Z or ±hh:mm); Date.parse alone accepts far more.
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
const TRACEPARENT = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

/** The parts of a consumed message an event is read from. */
export type IncomingMessage = Pick<KafkaMessage, "key" | "value" | "headers">;

/**
 * Reads an event from a consumed Kafka message. Throws PoisonMessageError naming the first
 * problem: a missing or repeated required header, a wrong spec version, an unparsable time, a
 * missing key or value. An invalid traceparent is dropped rather than refused, as W3C trace
 * context asks: the event is still good, it only starts a new trace.
 */
export function fromKafkaMessage(m: IncomingMessage): EventEnvelope {
  const headers = m.headers ?? {};
  const specversion = required(headers, EventHeaderNames.specversion);
  if (specversion !== SPEC_VERSION)
    throw new PoisonMessageError(`unsupported ${EventHeaderNames.specversion} "${specversion}"`);
  const id = required(headers, EventHeaderNames.id);
  const type = required(headers, EventHeaderNames.type);
  const source = required(headers, EventHeaderNames.source);
  const timeText = required(headers, EventHeaderNames.time);
  if (!RFC3339.test(timeText) || Number.isNaN(Date.parse(timeText))) {
    throw new PoisonMessageError(`${EventHeaderNames.time} "${timeText.slice(0, 64)}" is not an RFC 3339 timestamp`);
  }
  const contentType = required(headers, EventHeaderNames.contentType);
  if (m.key === null || m.key === undefined || m.key.length === 0) throw new PoisonMessageError("message has no key");
  if (m.value === null || m.value === undefined) throw new PoisonMessageError("message has no value");
  const event: EventEnvelope = {
    id,
    type,
    source,
    time: new Date(timeText),
    key: m.key.toString("utf8"),
    payload: new Uint8Array(m.value),
    contentType,
  };
  const traceparent = optional(headers, EventHeaderNames.traceparent);
  if (traceparent && TRACEPARENT.test(traceparent) && !traceparent.startsWith("ff")) {
    event.traceparent = traceparent;
    const tracestate = optional(headers, EventHeaderNames.tracestate);
    if (tracestate) event.tracestate = tracestate;
  }
  return event;
}

/**
 * The event type a message's header names, read without decoding the rest; undefined when the
 * header is absent or repeated (fromKafkaMessage then says what is wrong with it).
 */
export function eventTypeOf(m: Pick<KafkaMessage, "headers">): string | undefined {
  const v = m.headers?.[EventHeaderNames.type];
  if (v === undefined || (Array.isArray(v) && v.length !== 1)) return undefined;
  return (Array.isArray(v) ? v[0]! : v).toString();
}

function optional(headers: IHeaders, name: string): string | undefined {
  const v = headers[name];
  if (v === undefined) return undefined;
  if (Array.isArray(v)) {
    if (v.length !== 1) throw new PoisonMessageError(`header ${name} appears ${v.length} times`);
    return v[0]!.toString();
  }
  return v.toString();
}

function required(headers: IHeaders, name: string): string {
  const v = optional(headers, name);
  if (v === undefined || v.trim() === "") throw new PoisonMessageError(`missing header ${name}`);
  return v;
}
