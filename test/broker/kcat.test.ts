import { spawn, spawnSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startBroker, type RunningBroker } from "../../deploy/embedded/kafka/index.js";
import { consumeUntil, fastConsumer, kafkaFor, partitioner } from "./kafkajs-helpers.js";

const kcatFound = spawnSync("kcat", ["-V"]).status === 0;
if (!kcatFound && process.env.CI === "true") {
  // In CI a missing kcat is a broken environment, not a reason to skip the librdkafka coverage.
  throw new Error("kcat is not installed but CI=true: install it with `apt-get install -y kcat`");
}
if (!kcatFound)
  console.warn("kcat not found: skipping librdkafka (kcat) broker tests; install with `apt-get install -y kcat`");

function kcat(args: string[], input?: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn("kcat", args, { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("error", reject);
    p.on("close", (code) => resolve({ code, stdout, stderr }));
    p.stdin.end(input ?? "");
  });
}

let broker: RunningBroker;

beforeAll(async () => {
  broker = await startBroker({ port: 0, defaultPartitions: 3 });
});

afterAll(async () => {
  await broker?.stop();
});

describe.skipIf(!kcatFound)("kcat (librdkafka 2.0)", () => {
  it("-L lists this broker as controller and the topics with their partitions", async () => {
    const admin = kafkaFor(broker.address).admin();
    await admin.connect();
    await admin.createTopics({ topics: [{ topic: "kcat-meta", numPartitions: 4 }] });
    await admin.disconnect();
    const res = await kcat(["-b", broker.address, "-L", "-J"]);
    expect(res.code).toBe(0);
    const meta = JSON.parse(res.stdout) as {
      controllerid: number;
      brokers: { id: number; name: string }[];
      topics: { topic: string; partitions: { partition: number; leader: number }[] }[];
    };
    expect(meta.controllerid).toBe(1);
    expect(meta.brokers).toEqual([{ id: 1, name: broker.address }]);
    const topic = meta.topics.find((t) => t.topic === "kcat-meta")!;
    expect(topic.partitions.map((p) => p.partition).sort()).toEqual([0, 1, 2, 3]);
    expect(topic.partitions.every((p) => p.leader === 1)).toBe(true);
  });

  it("-P then -C round-trips keyed messages (auto-created topic)", async () => {
    const lines = Array.from({ length: 1000 }, (_, i) => `key${i % 7}:value-${i}`);
    const produced = await kcat(["-b", broker.address, "-P", "-t", "kcat-roundtrip", "-K:"], lines.join("\n") + "\n");
    expect(produced.code).toBe(0);
    const consumed = await kcat([
      "-b",
      broker.address,
      "-C",
      "-t",
      "kcat-roundtrip",
      "-o",
      "beginning",
      "-e",
      "-q",
      "-f",
      "%k:%s\\n",
    ]);
    expect(consumed.code).toBe(0);
    expect(consumed.stdout.trim().split("\n").sort()).toEqual([...lines].sort());
  });

  it("messages produced by kcat (gzip, idempotent) are consumed by kafkajs", async () => {
    const lines = Array.from({ length: 500 }, (_, i) => `k${i}:from-kcat-${i}`);
    const produced = await kcat(
      ["-b", broker.address, "-P", "-t", "kcat-to-kafkajs", "-K:", "-z", "gzip", "-X", "enable.idempotence=true"],
      lines.join("\n") + "\n",
    );
    expect(produced.code).toBe(0);
    const consumer = kafkaFor(broker.address).consumer({ groupId: "kcat-to-kafkajs-g", ...fastConsumer });
    await consumer.connect();
    await consumer.subscribe({ topic: "kcat-to-kafkajs", fromBeginning: true });
    try {
      const got = await consumeUntil(consumer, (all) => all.length >= 500).done;
      expect(got.map((m) => `${m.key}:${m.value}`).sort()).toEqual([...lines].sort());
    } finally {
      await consumer.disconnect();
    }
  });

  it("messages produced by kafkajs are consumed by kcat", async () => {
    const producer = kafkaFor(broker.address).producer({ createPartitioner: partitioner, idempotent: true });
    await producer.connect();
    const messages = Array.from({ length: 300 }, (_, i) => ({ key: `k${i}`, value: `from-kafkajs-${i}` }));
    await producer.send({ topic: "kafkajs-to-kcat", acks: -1, messages });
    await producer.disconnect();
    const consumed = await kcat([
      "-b",
      broker.address,
      "-C",
      "-t",
      "kafkajs-to-kcat",
      "-o",
      "beginning",
      "-e",
      "-q",
      "-f",
      "%k=%s\\n",
    ]);
    expect(consumed.code).toBe(0);
    expect(consumed.stdout.trim().split("\n").sort()).toEqual(messages.map((m) => `${m.key}=${m.value}`).sort());
  });

  it("-G consumes as a balanced group, commits, and a second run resumes after the commit", async () => {
    const topic = "kcat-group";
    const first = Array.from({ length: 200 }, (_, i) => `first-${i}`);
    expect((await kcat(["-b", broker.address, "-P", "-t", topic], first.join("\n") + "\n")).code).toBe(0);
    const run1 = await kcat([
      "-b",
      broker.address,
      "-G",
      "kcat-g",
      topic,
      "-e",
      "-q",
      "-f",
      "%s\\n",
      "-X",
      "auto.offset.reset=earliest",
    ]);
    expect(run1.code).toBe(0);
    expect(run1.stdout.trim().split("\n").sort()).toEqual([...first].sort());

    const admin = kafkaFor(broker.address).admin();
    await admin.connect();
    const committed = await admin.fetchOffsets({ groupId: "kcat-g", topics: [topic] });
    const ends = await admin.fetchTopicOffsets(topic);
    await admin.disconnect();
    // librdkafka commits only partitions it consumed from; its sticky partitioner may leave some empty.
    const nonEmpty = ends.filter((e) => e.high !== "0");
    expect(nonEmpty.length).toBeGreaterThan(0);
    for (const e of nonEmpty)
      expect(committed[0]!.partitions.find((p) => p.partition === e.partition)!.offset).toBe(e.high);

    const second = ["second-0", "second-1", "second-2"];
    expect((await kcat(["-b", broker.address, "-P", "-t", topic], second.join("\n") + "\n")).code).toBe(0);
    const run2 = await kcat([
      "-b",
      broker.address,
      "-G",
      "kcat-g",
      topic,
      "-e",
      "-q",
      "-f",
      "%s\\n",
      "-X",
      "auto.offset.reset=earliest",
    ]);
    expect(run2.code).toBe(0);
    expect(run2.stdout.trim().split("\n").sort()).toEqual(second);
  });
});
