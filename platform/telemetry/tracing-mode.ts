/**
 * What the process does with spans, set by startTelemetry: the RPC interceptors read it on every
 * call to do no more than that needs.
 *
 * - "off": no OpenTelemetry SDK; spans would all be no-ops.
 * - "ids": an SDK with nothing to export to; trace and span ids still matter (log lines,
 *   traceparent on outgoing calls) but nothing would ever read a span's attributes or timings.
 * - "spans": spans are exported (or handed to a test's exporter).
 */
export type TracingMode = "off" | "ids" | "spans";

let mode: TracingMode = "off";

export function tracingMode(): TracingMode {
  return mode;
}

export function setTracingMode(next: TracingMode): void {
  mode = next;
}
