/**
 * Standalone broker: `npm run broker -- --port 9092 --data-dir .data/kafka`.
 * Flags win over KAFKA_HOST / KAFKA_PORT / KAFKA_DATA_DIR / KAFKA_LOG_LEVEL.
 */
import { parseArgs } from "node:util";
import { startBroker, type LogLevel } from "./index.js";

const { values } = parseArgs({
  options: {
    host: { type: "string" },
    port: { type: "string" },
    "data-dir": { type: "string" },
    memory: { type: "boolean" },
    "log-level": { type: "string" },
    "default-partitions": { type: "string" },
    "no-auto-create": { type: "boolean" },
    help: { type: "boolean" },
  },
});

if (values.help) {
  process.stdout.write(
    "usage: npm run broker -- [--host 127.0.0.1] [--port 9092] [--data-dir .data/kafka | --memory]\n" +
      "                        [--log-level silent|error|warn|info|debug] [--default-partitions 1] [--no-auto-create]\n",
  );
  process.exit(0);
}

const port = Number(values.port ?? process.env.KAFKA_PORT ?? 9092);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write(`invalid port: ${values.port ?? process.env.KAFKA_PORT}\n`);
  process.exit(2);
}

const broker = await startBroker({
  host: values.host ?? process.env.KAFKA_HOST ?? "127.0.0.1",
  port,
  dataDir: values.memory ? null : (values["data-dir"] ?? process.env.KAFKA_DATA_DIR ?? ".data/kafka"),
  logLevel: (values["log-level"] ?? process.env.KAFKA_LOG_LEVEL ?? "info") as LogLevel,
  defaultPartitions: values["default-partitions"] ? Number(values["default-partitions"]) : undefined,
  autoCreateTopics: !values["no-auto-create"],
});
process.stdout.write(`kafka ${broker.address}\n`);

let stopping = false;
const stop = (signal: string): void => {
  if (stopping) return;
  stopping = true;
  broker.stop().then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`error while stopping on ${signal}: ${String(err)}\n`);
      process.exit(1);
    },
  );
};
process.on("SIGINT", () => stop("SIGINT"));
process.on("SIGTERM", () => stop("SIGTERM"));
