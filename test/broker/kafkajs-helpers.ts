import { Kafka, logLevel, Partitioners, type Consumer, type ConsumerConfig, type KafkaMessage } from "kafkajs";

export function kafkaFor(address: string, clientId = "broker-test"): Kafka {
  return new Kafka({
    clientId,
    brokers: [address],
    logLevel: logLevel.NOTHING,
    retry: { retries: 8, initialRetryTime: 50, maxRetryTime: 1000 },
  });
}

export const partitioner = Partitioners.DefaultPartitioner;

/** Consumer settings that make rebalances and long-polls take milliseconds instead of seconds. */
export const fastConsumer: Omit<ConsumerConfig, "groupId"> = {
  maxWaitTimeInMs: 50,
  sessionTimeout: 6000,
  rebalanceTimeout: 10_000,
  heartbeatInterval: 100,
  retry: { retries: 8, initialRetryTime: 50, maxRetryTime: 1000 },
};

export interface Received {
  topic: string;
  partition: number;
  offset: number;
  key: string | null;
  value: string | null;
  headers: Record<string, string>;
}

export function toReceived(topic: string, partition: number, m: KafkaMessage): Received {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(m.headers ?? {})) headers[k] = String(v);
  return {
    topic,
    partition,
    offset: Number(m.offset),
    key: m.key?.toString() ?? null,
    value: m.value?.toString() ?? null,
    headers,
  };
}

/** Runs a consumer until `predicate` holds over everything it received; rejects if the consumer crashes. */
export function consumeUntil(
  consumer: Consumer,
  predicate: (all: Received[]) => boolean,
): { done: Promise<Received[]>; received: Received[] } {
  const received: Received[] = [];
  const done = new Promise<Received[]>((resolve, reject) => {
    consumer.on(consumer.events.CRASH, (e) => reject(e.payload.error));
    consumer
      .run({
        eachMessage: async ({ topic, partition, message }) => {
          received.push(toReceived(topic, partition, message));
          if (predicate(received)) resolve(received);
        },
      })
      .catch(reject);
  });
  return { done, received };
}
