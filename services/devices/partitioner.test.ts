import { randomUUID } from "node:crypto";
import { Partitioners, type PartitionMetadata } from "kafkajs";
import { describe, expect, it } from "vitest";
import { rememberingPartitioner } from "./publisher.js";

const partitions = (n: number): PartitionMetadata[] =>
  Array.from({ length: n }, (_, i) => ({
    partitionId: i,
    leader: 0,
    partitionErrorCode: 0,
    replicas: [0],
    isr: [0],
  }));

describe("rememberingPartitioner", () => {
  it("picks the partition kafkajs' default partitioner picks, for every key and partition count", () => {
    const remembering = rememberingPartitioner();
    const plain = Partitioners.DefaultPartitioner();
    const keys = Array.from({ length: 200 }, () => Buffer.from(randomUUID()));
    for (const count of [3, 3, 7, 1, 3]) {
      const partitionMetadata = partitions(count);
      for (const key of keys) {
        const args = { topic: "device.events", partitionMetadata, message: { key, value: null } };
        expect(remembering(args)).toBe(plain(args));
      }
    }
    // A partition the message names, and a string key, are left to the default as they are.
    const partitionMetadata = partitions(3);
    expect(remembering({ topic: "t", partitionMetadata, message: { key: keys[0]!, value: null, partition: 2 } })).toBe(
      2,
    );
    const key = randomUUID();
    expect(remembering({ topic: "t", partitionMetadata, message: { key, value: null } })).toBe(
      plain({ topic: "t", partitionMetadata, message: { key, value: null } }),
    );
  });
});
