import { trace } from "@opentelemetry/api";

export type Level = "debug" | "info" | "warn" | "error";
const rank: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

type Fields = Record<string, unknown>;

export interface Logger {
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  child(fields: Fields): Logger;
}

const state = {
  level: (process.env.LOG_LEVEL as Level | undefined) ?? "info",
  service: process.env.OTEL_SERVICE_NAME ?? "medmesh",
  write: (line: string): void => {
    process.stdout.write(line + "\n");
  },
};

/** Set once by the process entry; every logger created before or after picks it up. */
export function configureLogging(opts: { service?: string; level?: Level; write?: (line: string) => void }): void {
  if (opts.service) state.service = opts.service;
  if (opts.level && opts.level in rank) state.level = opts.level;
  if (opts.write) state.write = opts.write;
}

/** Whether a line at `level` would be written: spares building fields for one that would not. */
export function levelEnabled(level: Level): boolean {
  return rank[level] >= rank[state.level];
}

function emit(level: Level, msg: string, base: Fields, fields?: Fields): void {
  if (rank[level] < rank[state.level]) return;
  const span = trace.getActiveSpan()?.spanContext();
  const record: Fields = {
    time: new Date().toISOString(),
    level,
    service: state.service,
    msg,
    ...(span && span.traceId !== "00000000000000000000000000000000"
      ? { trace_id: span.traceId, span_id: span.spanId }
      : {}),
    ...base,
    ...fields,
  };
  state.write(JSON.stringify(record, replacer));
}

// bigint does not serialise, and an Error's useful parts are not enumerable.
function replacer(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Error) return { message: value.message, name: value.name };
  return value;
}

function make(base: Fields): Logger {
  return {
    debug: (m, f) => emit("debug", m, base, f),
    info: (m, f) => emit("info", m, base, f),
    warn: (m, f) => emit("warn", m, base, f),
    error: (m, f) => emit("error", m, base, f),
    child: (f) => make({ ...base, ...f }),
  };
}

export const logger: Logger = make({});
