import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../platform/config/env.js";
import { configSpec } from "./main.js";

describe("the worker's configuration", () => {
  it("needs brokers and its API key, and says so for both at once", () => {
    let caught: unknown;
    try {
      loadConfig(configSpec, { KAFKA_BROKERS: " , " });
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as ConfigError).problems).toEqual([
      "KAFKA_BROKERS: is required (Kafka brokers, host:port, comma separated)",
      "PROCESSING_API_KEY is required (the worker's service API key (secret), traded with identity for access tokens)",
    ]);
  });

  it("defaults to the issue's schedule: 3 tries, 2 s then 4 s, document.events.dlq, 3 partitions at once", () => {
    const c = loadConfig(configSpec, { KAFKA_BROKERS: "a:9092,b:9092", PROCESSING_API_KEY: "mmk_x" });
    expect(c).toMatchObject({
      KAFKA_BROKERS: ["a:9092", "b:9092"],
      PROCESSING_MAX_ATTEMPTS: 3,
      PROCESSING_RETRY_BASE_MS: 1000,
      PROCESSING_DLQ_TOPIC: "document.events.dlq",
      PROCESSING_CONCURRENCY: 3,
      PROCESSING_GROUP_ID: "processing",
      PROCESSING_PORT: 50053,
    });
  });
});
