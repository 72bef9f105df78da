import { ConfigError } from "../config/env.js";
import { logger } from "../telemetry/logger.js";

export interface Started {
  /** Printed as `<name> <url>` lines by the process, and sent to a parent launcher over IPC. */
  endpoints: Record<string, string>;
  stop(): Promise<void>;
}

/**
 * The process entry every service and the gateway share: start, announce readiness, and stop
 * cleanly on SIGINT/SIGTERM (or when the launcher that spawned us goes away) within a bound.
 * A configuration error is a sentence on stderr and exit code 2, never a stack trace.
 */
export async function runMain(name: string, start: () => Promise<Started>, stopBoundMs = 15_000): Promise<void> {
  let started: Started;
  try {
    started = await start();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${name}: ${err.message}\n`);
      process.exit(2);
    }
    const error = err instanceof Error ? err.message : String(err);
    logger.error("failed to start", { error });
    // The launcher turns this into a sentence for the operator (a taken port names its variable).
    await tellLauncher({ type: "failed", name, error, code: (err as NodeJS.ErrnoException).code });
    process.exit(1);
  }
  let stopping = false;
  const stop = async (reason: string) => {
    if (stopping) return;
    stopping = true;
    logger.info("stopping", { reason });
    const bound = setTimeout(() => {
      logger.error("stop took too long; exiting anyway", { bound_ms: stopBoundMs });
      process.exit(1);
    }, stopBoundMs);
    bound.unref();
    try {
      await started.stop();
    } catch (err) {
      logger.error("error while stopping", { error: (err as Error).message });
    }
    process.exit(0);
  };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
  if (process.send) {
    process.send({ type: "ready", name, endpoints: started.endpoints });
    // The launcher's death closes the IPC channel: nobody is left to stop us, so stop ourselves.
    process.on("disconnect", () => void stop("launcher went away"));
  } else {
    for (const [k, v] of Object.entries(started.endpoints)) process.stdout.write(`${k} ${v}\n`);
  }
  logger.info("ready", started.endpoints);
}

/** Sends a message to the launcher that forked us, if any, and waits until it is on its way. */
function tellLauncher(message: Record<string, unknown>): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send || !process.connected) return resolve();
    // Exiting right after an unsent message would lose it; the callback says it left.
    process.send(message, undefined, {}, () => resolve());
  });
}

export function isEntryPoint(metaUrl: string): boolean {
  const arg = process.argv[1];
  if (!arg) return false;
  return (
    new URL(metaUrl).pathname === new URL(`file://${arg.startsWith("/") ? arg : `${process.cwd()}/${arg}`}`).pathname
  );
}
