import type { Consumer, Producer } from "kafkajs";
import { afterAll, beforeAll, expect, it } from "vitest";
import { startBroker, type RunningBroker } from "../../deploy/embedded/kafka/index.js";
import { fastConsumer, kafkaFor, partitioner, toReceived, type Received } from "./kafkajs-helpers.js";

let broker: RunningBroker;
const open: (Consumer | Producer)[] = [];

beforeAll(async () => {
  broker = await startBroker({ port: 0 });
});

afterAll(async () => {
  for (const c of open) await c.disconnect().catch(() => {});
  await broker.stop();
});

const TOPIC = "group-rebalance";
const GROUP = "group-rebalance-g";

interface Member {
  name: string;
  consumer: Consumer;
  assigned: number[];
}

function waitFor(check: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const tick = (): void => {
      if (check()) resolve();
      else setTimeout(tick, 20);
    };
    tick();
  });
}

it("three members share the partitions as they join and leave, losing nothing and consuming nothing twice", async () => {
  const kafka = kafkaFor(broker.address, "group-test");
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic: TOPIC, numPartitions: 6 }] });
  await admin.disconnect();

  const producer = kafka.producer({ createPartitioner: partitioner, idempotent: true, maxInFlightRequests: 1 });
  open.push(producer);
  await producer.connect();

  const consumed: (Received & { member: string })[] = [];
  const crashes: unknown[] = [];
  const members: Member[] = [];

  async function startMember(name: string): Promise<Member> {
    const consumer = kafka.consumer({ groupId: GROUP, ...fastConsumer });
    open.push(consumer);
    const member: Member = { name, consumer, assigned: [] };
    consumer.on(consumer.events.GROUP_JOIN, (e) => {
      member.assigned = [...(e.payload.memberAssignment[TOPIC] ?? [])].sort();
    });
    consumer.on(consumer.events.CRASH, (e) => crashes.push(e.payload.error));
    await consumer.connect();
    await consumer.subscribe({ topic: TOPIC, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ topic, partition, message }) => {
        consumed.push({ ...toReceived(topic, partition, message), member: name });
      },
    });
    members.push(member);
    return member;
  }

  /** Stable means: the live members' assignments are disjoint and cover all six partitions. */
  const settled = (live: Member[]): boolean => {
    const all = live.flatMap((m) => m.assigned).sort();
    return all.length === 6 && all.every((p, i) => p === i) && live.every((m) => m.assigned.length > 0);
  };

  let produced = 0;
  async function produce(n: number): Promise<void> {
    for (let i = 0; i < n; i += 50) {
      const batch = Array.from({ length: Math.min(50, n - i) }, () => ({
        key: `key-${produced % 23}`,
        value: `msg-${produced++}`,
      }));
      await producer.send({ topic: TOPIC, acks: -1, messages: batch });
    }
  }
  const allConsumed = (): boolean => new Set(consumed.map((m) => m.value)).size >= produced;

  const a = await startMember("a");
  await waitFor(() => settled([a]));
  await produce(300);
  await waitFor(allConsumed);

  const b = await startMember("b");
  // Produce while the group rebalances, not only between rebalances.
  await produce(300);
  await waitFor(() => settled([a, b]));
  await waitFor(allConsumed);

  const c = await startMember("c");
  await produce(300);
  await waitFor(() => settled([a, b, c]));
  expect(a.assigned.length + b.assigned.length + c.assigned.length).toBe(6);
  await waitFor(allConsumed);

  await b.consumer.disconnect();
  await produce(300);
  await waitFor(() => settled([a, c]));
  await waitFor(allConsumed);

  await a.consumer.disconnect();
  await produce(300);
  await waitFor(() => settled([c]));
  await waitFor(allConsumed);

  expect(crashes).toEqual([]);
  const values = consumed.map((m) => m.value!);
  const expected = Array.from({ length: produced }, (_, i) => `msg-${i}`);
  expect(new Set(values).size).toBe(produced);
  expect([...values].sort()).toEqual([...expected].sort());
  // Every member got work, and each message was handled exactly once.
  expect(new Set(consumed.map((m) => m.member))).toEqual(new Set(["a", "b", "c"]));
  expect(values.length).toBe(produced);

  await c.consumer.disconnect();
  const offsetsAdmin = kafka.admin();
  await offsetsAdmin.connect();
  const committed = await offsetsAdmin.fetchOffsets({ groupId: GROUP, topics: [TOPIC] });
  const ends = await offsetsAdmin.fetchTopicOffsets(TOPIC);
  await offsetsAdmin.disconnect();
  for (const end of ends) {
    expect(committed[0]!.partitions.find((p) => p.partition === end.partition)?.offset).toBe(end.high);
  }
});

it("a member killed without leaving is evicted by its session timeout and its partitions move", async () => {
  const { spawn } = await import("node:child_process");
  const path = await import("node:path");
  const { fileURLToPath } = await import("node:url");
  const topic = "group-killed";
  const group = "group-killed-g";
  const kafka = kafkaFor(broker.address, "kill-test");
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 4 }] });
  await admin.disconnect();

  const fixture = path.join(path.dirname(fileURLToPath(import.meta.url)), "fixtures", "kafkajs-member.ts");
  const child = spawn(process.execPath, ["--import", "tsx", fixture, broker.address, group, topic], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  try {
    let childAssigned: number[] = [];
    let childOut = "";
    child.stdout.on("data", (d: Buffer) => {
      childOut += d.toString();
      for (const line of childOut.split("\n"))
        if (line.startsWith("assigned ")) childAssigned = JSON.parse(line.slice(9)) as number[];
    });
    await waitFor(() => childAssigned.length === 4);

    const survivor = kafka.consumer({ groupId: group, ...fastConsumer });
    open.push(survivor);
    let assigned: number[] = [];
    survivor.on(survivor.events.GROUP_JOIN, (e) => (assigned = [...(e.payload.memberAssignment[topic] ?? [])].sort()));
    const seen = new Set<string>();
    await survivor.connect();
    await survivor.subscribe({ topic, fromBeginning: true });
    await survivor.run({ eachMessage: async ({ message }) => void seen.add(message.value!.toString()) });
    await waitFor(() => assigned.length === 2);

    child.kill("SIGKILL");
    // Nobody tells the coordinator: only the missing heartbeats do.
    await waitFor(() => assigned.length === 4);
    expect(assigned).toEqual([0, 1, 2, 3]);

    const producer = kafka.producer({ createPartitioner: partitioner });
    open.push(producer);
    await producer.connect();
    const values = Array.from({ length: 40 }, (_, i) => `after-kill-${i}`);
    await producer.send({ topic, messages: values.map((value, i) => ({ key: String(i), value })) });
    await waitFor(() => values.every((v) => seen.has(v)));
    expect(values.filter((v) => !seen.has(v))).toEqual([]);
  } finally {
    child.kill("SIGKILL");
  }
});
