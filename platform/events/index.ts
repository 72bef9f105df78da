export * from "./envelope.js";
export * from "./kafka.js";
export * from "./outbox.js";
export * from "./consumer.js";
export * from "./pruning.js";
export * from "./failure-class.js";
export * from "./dlq-replay.js";
