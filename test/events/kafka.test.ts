import { logLevel } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startBroker, type RunningBroker } from "../../deploy/embedded/kafka/index.js";
import { createKafka, ensureTopics, topicPartitions } from "../../platform/events/kafka.js";
import { configureLogging, logger } from "../../platform/telemetry/logger.js";

describe("kafka client helpers", () => {
  let broker: RunningBroker;
  const lines: Record<string, unknown>[] = [];

  beforeAll(async () => {
    broker = await startBroker({ port: 0, dataDir: null });
    configureLogging({ service: "events-kafka-test", level: "debug", write: (l) => void lines.push(JSON.parse(l)) });
  });
  afterAll(async () => {
    await broker?.stop();
  });

  it("writes kafkajs logs as the mesh's JSON lines, honouring kafkajs' level", () => {
    const kafka = createKafka({
      brokers: [broker.address],
      clientId: "log-test",
      logger: logger.child({ svc: "x" }),
      logLevel: logLevel.WARN,
    });
    kafka.logger().namespace("Connection").warn("broker trouble", { broker: "b1", retryCount: 2 });
    kafka.logger().error("broker gone", { broker: "b1" });
    kafka.logger().info("chatter", {});
    const mine = lines.filter((l) => l.component === "kafkajs");
    expect(mine).toHaveLength(2);
    expect(mine[0]).toMatchObject({
      level: "warn",
      msg: "broker trouble",
      service: "events-kafka-test",
      svc: "x",
      broker: "b1",
      retryCount: 2,
    });
    expect(mine[1]).toMatchObject({ level: "error", msg: "broker gone" });
    expect(mine[0]!.namespace).toBe("Connection");
    expect(mine[0]!.timestamp).toBeUndefined();
  });

  it("creates only missing topics, with the partition count asked for", async () => {
    const kafka = createKafka({ brokers: [broker.address], clientId: "topics-test", logLevel: logLevel.NOTHING });
    await ensureTopics(kafka, [{ topic: "kit.a", numPartitions: 3 }]);
    await ensureTopics(kafka, [
      { topic: "kit.a", numPartitions: 5 },
      { topic: "kit.b", numPartitions: 2 },
    ]);
    const partitions = await topicPartitions(kafka, ["kit.a", "kit.b", "kit.absent"]);
    expect(Object.fromEntries(partitions)).toEqual({ "kit.a": 3, "kit.b": 2 });
  });
});
