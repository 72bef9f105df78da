/**
 * Asks a gRPC server's grpc.health.v1 service whether it is SERVING and turns the answer into an
 * exit code, so container runtimes that can only run a command (compose healthchecks, Kubernetes
 * exec probes on clusters without native gRPC probes) can use gRPC health.
 *
 *   node --import tsx deploy/compose/grpc-health-probe.ts <address> [--service=<name>] [--timeout-ms=<n>]
 *
 * <address> is any grpc-js target: host:port, [::1]:port, dns:///name:port.
 */
import path from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Client, credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import {
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as Status,
  type HealthCheckResponse,
} from "../../gen/grpc/health/v1/health_pb.js";

/** Distinct codes so a person reading `docker inspect` can tell "up but unhealthy" from "down". */
export const ExitCode = {
  serving: 0,
  notServing: 1,
  unreachable: 2,
  usage: 64,
} as const;

export interface ProbeOptions {
  /** "" asks about the whole server, which is what orchestrators care about. */
  service?: string;
  timeoutMs?: number;
}

export interface ProbeResult {
  exitCode: number;
  message: string;
}

const checkPath = "/grpc.health.v1.Health/Check";

export async function probeHealth(target: string, opts: ProbeOptions = {}): Promise<ProbeResult> {
  const service = opts.service ?? "";
  const timeoutMs = opts.timeoutMs ?? 3_000;
  const client = new Client(target, credentials.createInsecure(), {
    // A probe must measure the server as it is now: no transparent retries that stretch the
    // answer past the orchestrator's own timeout.
    "grpc.enable_retries": 0,
  });
  try {
    const response = await new Promise<HealthCheckResponse>((resolve, reject) => {
      client.makeUnaryRequest(
        checkPath,
        (req: ReturnType<typeof create<typeof HealthCheckRequestSchema>>) =>
          Buffer.from(toBinary(HealthCheckRequestSchema, req)),
        (bytes: Buffer) => fromBinary(HealthCheckResponseSchema, bytes),
        create(HealthCheckRequestSchema, { service }),
        new Metadata(),
        // waitForReady stays off so a refused connection fails now rather than at the deadline.
        { deadline: Date.now() + timeoutMs },
        (err: ServiceError | null, value?: HealthCheckResponse) =>
          err || !value ? reject(err ?? new Error("empty response")) : resolve(value),
      );
    });
    const name = Status[response.status] ?? String(response.status);
    const subject = service ? `service "${service}"` : "server";
    return response.status === Status.SERVING
      ? { exitCode: ExitCode.serving, message: `${target}: ${subject} SERVING` }
      : { exitCode: ExitCode.notServing, message: `${target}: ${subject} ${name}` };
  } catch (err) {
    const e = err as Partial<ServiceError>;
    // NOT_FOUND is the health protocol's way of saying the named service is unknown: the server is
    // up but cannot vouch for that service, which is "not serving", not "unreachable".
    if (e.code === 5)
      return { exitCode: ExitCode.notServing, message: `${target}: service "${service}" unknown to the server` };
    return {
      exitCode: ExitCode.unreachable,
      message: `${target}: health check failed: ${e.details || e.message || String(err)}`,
    };
  } finally {
    client.close();
  }
}

async function cli(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { service: { type: "string", default: "" }, "timeout-ms": { type: "string", default: "3000" } },
    });
  } catch (err) {
    process.stderr.write(`grpc-health-probe: ${(err as Error).message}\n`);
    return ExitCode.usage;
  }
  const [target, ...extra] = parsed.positionals;
  const timeoutMs = Number(parsed.values["timeout-ms"]);
  if (!target || extra.length || !Number.isInteger(timeoutMs) || timeoutMs <= 0) {
    process.stderr.write("usage: grpc-health-probe <address> [--service=<name>] [--timeout-ms=<positive integer>]\n");
    return ExitCode.usage;
  }
  // Belt and braces: whatever happens inside grpc-js, the process answers within the bound.
  setTimeout(() => {
    process.stderr.write(`${target}: no answer within ${timeoutMs} ms\n`);
    process.exit(ExitCode.unreachable);
  }, timeoutMs + 2_000).unref();
  const result = await probeHealth(target, { service: parsed.values.service, timeoutMs });
  (result.exitCode === ExitCode.serving ? process.stdout : process.stderr).write(result.message + "\n");
  return result.exitCode;
}

const invoked = process.argv[1] ? pathToFileURL(path.resolve(process.argv[1])).href : "";
if (import.meta.url === invoked) {
  void cli(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
