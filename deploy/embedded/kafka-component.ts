import path from "node:path";
import { env, loadConfig } from "../../platform/config/env.js";
import { components, hostField, portField } from "../../platform/config/components.js";
import { isEntryPoint, runMain, type Started } from "../../platform/lifecycle/run-main.js";
import { configureLogging } from "../../platform/telemetry/logger.js";
import { startBroker } from "./kafka/index.js";

export const configSpec = {
  MEDMESH_DATA_DIR: env.string("where embedded data lives", ".data"),
  ...hostField(components.kafka, "interface (and advertised host) of the embedded broker"),
  ...portField(components.kafka, "port of the embedded broker"),
  KAFKA_DEFAULT_PARTITIONS: env.int("partitions of auto-created topics", 3, 1, 64),
  KAFKA_LOG_LEVEL: env.oneOf("broker log threshold", ["silent", "error", "warn", "info", "debug"] as const, "warn"),
};

/** The embedded Kafka-compatible broker as a launcher component (data under MEDMESH_DATA_DIR/kafka). */
export async function startEmbeddedKafka(source: Record<string, string | undefined> = process.env): Promise<Started> {
  const config = loadConfig(configSpec, source);
  configureLogging({ service: "kafka" });
  const broker = await startBroker({
    host: config.KAFKA_HOST,
    port: config.KAFKA_PORT,
    dataDir: path.resolve(config.MEDMESH_DATA_DIR, "kafka"),
    defaultPartitions: config.KAFKA_DEFAULT_PARTITIONS,
    logLevel: config.KAFKA_LOG_LEVEL,
  });
  return { endpoints: { kafka: broker.address }, stop: () => broker.stop() };
}

if (isEntryPoint(import.meta.url)) void runMain("kafka", () => startEmbeddedKafka());
