import { randomFillSync } from "node:crypto";
import { trace, TraceFlags, type Context, type SpanContext } from "@opentelemetry/api";

/**
 * A span context for a span that nothing will export: the parent's trace (or a new one) and a
 * span id of its own. With ids alone, log lines and traceparent still carry the trace, without
 * the SDK's span object, attributes and timings on every call.
 */
export function childIds(parent: Context): SpanContext {
  const p = trace.getSpanContext(parent);
  const valid = p !== undefined && trace.isSpanContextValid(p);
  return {
    traceId: valid ? p.traceId : randomHex(16),
    spanId: randomHex(8),
    traceFlags: valid ? p.traceFlags : TraceFlags.SAMPLED,
  };
}

// Ids need to be unique, not secret: random bytes are drawn a pool at a time, not per call.
const pool = Buffer.alloc(4096);
let used = pool.length;

/** `bytes` random bytes as lower-case hex. */
function randomHex(bytes: number): string {
  if (used + bytes > pool.length) {
    randomFillSync(pool);
    used = 0;
  }
  used += bytes;
  return pool.toString("hex", used - bytes, used);
}
