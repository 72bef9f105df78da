/**
 * Typed environment configuration. Every variable is declared once with its type, default and
 * meaning; all problems are reported together at start-up, in one message a person can act on.
 */

export interface Field<T> {
  describe: string;
  /** `source` is the whole environment, for the rare field whose rule depends on another. */
  parse(raw: string | undefined, name: string, source: Record<string, string | undefined>): T;
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
    this.name = "ConfigError";
  }
}

class Problem extends Error {}

export const env = {
  string(describe: string, def?: string): Field<string> {
    return {
      describe,
      parse(raw, name) {
        if (raw !== undefined && raw !== "") return raw;
        if (def !== undefined) return def;
        throw new Problem(`${name} is required (${describe})`);
      },
    };
  },
  optionalString(describe: string): Field<string | undefined> {
    return { describe, parse: (raw) => (raw === undefined || raw === "" ? undefined : raw) };
  },
  url(describe: string, protocols: string[]): Field<string | undefined> {
    return {
      describe,
      parse(raw, name) {
        if (raw === undefined || raw === "") return undefined;
        let u: URL;
        try {
          u = new URL(raw);
        } catch {
          throw new Problem(`${name} must be a URL such as ${protocols[0]}//host:port (got "${raw}")`);
        }
        if (!protocols.includes(u.protocol)) {
          throw new Problem(`${name} must use ${protocols.join(" or ")} (got "${u.protocol}")`);
        }
        return raw;
      },
    };
  },
  int(describe: string, def: number, min: number, max: number): Field<number> {
    return {
      describe,
      parse(raw, name) {
        if (raw === undefined || raw === "") return def;
        const n = Number(raw);
        if (!Number.isInteger(n) || n < min || n > max) {
          throw new Problem(`${name} must be a whole number from ${min} to ${max} (got "${raw}")`);
        }
        return n;
      },
    };
  },
  port(describe: string, def: number): Field<number> {
    return env.int(describe, def, 0, 65535);
  },
  bytes(describe: string, def: number): Field<number> {
    return {
      describe,
      parse(raw, name) {
        if (raw === undefined || raw === "") return def;
        const m = /^(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?$/i.exec(raw.trim());
        if (!m) throw new Problem(`${name} must be a size such as 4MiB or 1048576 (got "${raw}")`);
        const unit = (m[2] ?? "b").toLowerCase();
        const factor = { b: 1, kb: 1e3, kib: 1024, mb: 1e6, mib: 1024 ** 2, gb: 1e9, gib: 1024 ** 3 }[unit]!;
        return Number(m[1]) * factor;
      },
    };
  },
  oneOf<T extends string>(describe: string, values: readonly T[], def: T): Field<T> {
    return {
      describe,
      parse(raw, name) {
        if (raw === undefined || raw === "") return def;
        if (!values.includes(raw as T)) throw new Problem(`${name} must be one of ${values.join(", ")} (got "${raw}")`);
        return raw as T;
      },
    };
  },
  /** A value with its own syntax: `parse` throws a sentence, reported as `NAME: sentence`. */
  parsed<T>(describe: string, def: string, parse: (raw: string) => T): Field<T> {
    return {
      describe,
      parse(raw, name) {
        try {
          return parse(raw === undefined || raw === "" ? def : raw);
        } catch (err) {
          throw new Problem(`${name}: ${(err as Error).message}`);
        }
      },
    };
  },
  /**
   * A secret production cannot run without (NODE_ENV=production, which the image sets), optional
   * elsewhere so tests and a process started by hand run without one; `parse` checks its form and
   * throws a sentence that never quotes the value.
   */
  productionSecret<T>(describe: string, parse: (raw: string) => T): Field<T | undefined> {
    return {
      describe,
      parse(raw, name, source) {
        if (raw === undefined || raw === "") {
          if (source.NODE_ENV === "production") throw new Problem(`${name} is required in production (${describe})`);
          return undefined;
        }
        try {
          return parse(raw);
        } catch (err) {
          throw new Problem(`${name}: ${(err as Error).message}`);
        }
      },
    };
  },
  list(describe: string, def: string[]): Field<string[]> {
    return {
      describe,
      parse: (raw) =>
        raw === undefined
          ? def
          : raw
              .split(",")
              .map((s) => s.trim())
              .filter(Boolean),
    };
  },
};

export type Spec = Record<string, Field<unknown>>;
export type Parsed<S extends Spec> = { [K in keyof S]: S[K] extends Field<infer T> ? T : never };

export function loadConfig<S extends Spec>(
  spec: S,
  source: Record<string, string | undefined> = process.env,
): Parsed<S> {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [name, field] of Object.entries(spec)) {
    try {
      out[name] = field.parse(source[name], name, source);
    } catch (err) {
      if (err instanceof Problem) problems.push(err.message);
      else throw err;
    }
  }
  if (problems.length) throw new ConfigError(problems);
  return out as Parsed<S>;
}

/** The variables every medmesh process understands. */
export const commonSpec = {
  LOG_LEVEL: env.oneOf("log threshold", ["debug", "info", "warn", "error"] as const, "info"),
  OTEL_EXPORTER_OTLP_ENDPOINT: env.url("OTLP/HTTP collector; traces are exported when set", ["http:", "https:"]),
  MEDMESH_DATA_DIR: env.string("where embedded data lives (PGlite, blobs)", ".data"),
  SHUTDOWN_GRACE_MS: env.int("how long in-flight calls may drain on stop", 10_000, 0, 120_000),
};

/** What every gRPC service with its own database reads, beside its own variables. */
export const serviceSpec = {
  ...commonSpec,
  DATABASE_URL: env.url("Postgres server; unset means embedded PGlite under MEDMESH_DATA_DIR", [
    "postgres:",
    "postgresql:",
  ]),
  DB_POOL_MAX: env.int("connections per service pool", 10, 1, 100),
  // Room for a 4 MiB upload part plus its envelope: exactly 4 MiB would refuse the largest part.
  GRPC_MAX_MESSAGE_BYTES: env.bytes("largest gRPC message accepted or sent", 8 * 1024 * 1024),
  DEFAULT_DEADLINE_MS: env.int("deadline for unary calls that set none", 10_000, 100, 300_000),
  MAX_DEADLINE_MS: env.int("longest deadline a unary call may ask for", 60_000, 100, 600_000),
};
