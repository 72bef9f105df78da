import { env } from "../config/env.js";

function requiredBrokerList(raw: string): string[] {
  const list = raw
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  if (list.length === 0) throw new Error("is required (Kafka brokers, host:port, comma separated)");
  return list;
}

/** For the config spec of a service that cannot run without Kafka; `use` says what it does there. */
export function requiredBrokersSpec(use: string) {
  return {
    KAFKA_BROKERS: env.parsed(`Kafka brokers (host:port, comma separated) to ${use}`, "", requiredBrokerList),
  };
}
