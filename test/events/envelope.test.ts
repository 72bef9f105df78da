import type { IHeaders } from "kafkajs";
import { describe, expect, it } from "vitest";
import {
  PoisonMessageError,
  fromKafkaMessage,
  newEvent,
  protobufContentType,
  toKafkaMessage,
  type EventEnvelope,
  type IncomingMessage,
} from "../../platform/events/envelope.js";

const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

function sample(): EventEnvelope {
  return newEvent({
    type: "medmesh.document.uploaded.v1",
    source: "/medmesh/documents",
    key: "doc-42",
    payload: new Uint8Array([0x0a, 0x03, 0x61, 0x62, 0x63, 0x00, 0xff]),
    contentType: protobufContentType("medmesh.events.v1.DocumentUploaded"),
    traceparent,
    tracestate: "vendor=x",
  });
}

/** What a consumer gets for a produced message: Buffers, not strings. */
function asConsumed(e: EventEnvelope): IncomingMessage {
  const m = toKafkaMessage(e);
  const headers: IHeaders = {};
  for (const [k, v] of Object.entries(m.headers ?? {})) headers[k] = Buffer.from(String(v));
  return {
    key: Buffer.from(String(m.key)),
    value: m.value as Buffer,
    headers,
  };
}

function withHeaders(patch: Record<string, string | Buffer | Buffer[] | undefined>): IncomingMessage {
  const m = asConsumed(sample());
  const headers = { ...m.headers };
  for (const [k, v] of Object.entries(patch)) {
    if (v === undefined) delete headers[k];
    else headers[k] = v;
  }
  return { ...m, headers };
}

function reasonOf(m: IncomingMessage): string {
  try {
    fromKafkaMessage(m);
  } catch (err) {
    expect(err).toBeInstanceOf(PoisonMessageError);
    return (err as PoisonMessageError).reason;
  }
  throw new Error("expected a poison message");
}

describe("envelope", () => {
  it("writes the CloudEvents binary-mode headers", () => {
    const e = sample();
    const m = toKafkaMessage(e);
    expect(m.key).toBe("doc-42");
    expect(m.headers).toEqual({
      ce_specversion: "1.0",
      ce_id: e.id,
      ce_type: "medmesh.document.uploaded.v1",
      ce_source: "/medmesh/documents",
      ce_time: e.time.toISOString(),
      "content-type": "application/protobuf; proto=medmesh.events.v1.DocumentUploaded",
      traceparent,
      tracestate: "vendor=x",
    });
    expect(e.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it("round-trips every field, payload bytes exactly", () => {
    const e = sample();
    const back = fromKafkaMessage(asConsumed(e));
    expect(back).toEqual(e);
    expect(back.payload).toBeInstanceOf(Uint8Array);
    expect([...back.payload]).toEqual([0x0a, 0x03, 0x61, 0x62, 0x63, 0x00, 0xff]);
  });

  it("round-trips without trace context", () => {
    const { traceparent: _t, tracestate: _s, ...e } = sample();
    const m = asConsumed(e);
    expect(Object.keys(m.headers ?? {})).not.toContain("traceparent");
    expect(fromKafkaMessage(m)).toEqual(e);
  });

  it("accepts an offset time and an empty payload", () => {
    const e = { ...sample(), payload: new Uint8Array() };
    const back = fromKafkaMessage(withHeaders({ ce_time: "2026-01-02T03:04:05.678+02:00" }));
    expect(back.time.toISOString()).toBe("2026-01-02T01:04:05.678Z");
    expect(fromKafkaMessage(asConsumed(e)).payload.length).toBe(0);
  });

  for (const header of ["ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "content-type"]) {
    it(`refuses a message without ${header}`, () => {
      expect(reasonOf(withHeaders({ [header]: undefined }))).toBe(`missing header ${header}`);
    });
    it(`refuses a message with an empty ${header}`, () => {
      expect(reasonOf(withHeaders({ [header]: Buffer.from("  ") }))).toBe(`missing header ${header}`);
    });
  }

  it("refuses a message with no headers at all", () => {
    const m = { ...asConsumed(sample()), headers: undefined };
    expect(reasonOf(m)).toBe("missing header ce_specversion");
  });

  it("refuses another spec version", () => {
    expect(reasonOf(withHeaders({ ce_specversion: "0.3" }))).toBe('unsupported ce_specversion "0.3"');
  });

  it.each(["yesterday", "2026-01-02", "2026-01-02T03:04:05", "2026-13-02T03:04:05Z", "1767323045"])(
    "refuses ce_time %s",
    (time) => {
      expect(reasonOf(withHeaders({ ce_time: time }))).toMatch(/^ce_time ".*" is not an RFC 3339 timestamp$/);
    },
  );

  it("refuses a repeated header", () => {
    expect(reasonOf(withHeaders({ ce_id: [Buffer.from("a"), Buffer.from("b")] }))).toBe("header ce_id appears 2 times");
  });

  it("refuses a message without a key or a value", () => {
    expect(reasonOf({ ...asConsumed(sample()), key: null })).toBe("message has no key");
    expect(reasonOf({ ...asConsumed(sample()), key: Buffer.alloc(0) })).toBe("message has no key");
    expect(reasonOf({ ...asConsumed(sample()), value: null })).toBe("message has no value");
  });

  it("drops a malformed traceparent instead of refusing the event", () => {
    for (const bad of [
      "garbage",
      "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
      "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ]) {
      const back = fromKafkaMessage(withHeaders({ traceparent: Buffer.from(bad) }));
      expect(back.traceparent).toBeUndefined();
      expect(back.tracestate).toBeUndefined();
      expect(back.type).toBe("medmesh.document.uploaded.v1");
    }
  });
});
