import { parseArgs } from "node:util";
import { createKafka, replayDeadLetters } from "../../platform/events/index.js";
import { isEntryPoint } from "../../platform/lifecycle/run-main.js";

const usage = `Replays dead letters to the topic each came from, with its original key, value and headers.

  npm run dlq:replay -- [--topic document.events.dlq] [--group <replay group>] [--dry-run] [--limit N]
                        [--brokers host:port,...]

  --topic     the dead-letter topic (default: PROCESSING_DLQ_TOPIC, else document.events.dlq)
  --group     the replay's own consumer group; it resumes where the last run of that group stopped,
              so nothing is replayed twice (default: <topic>.replay)
  --dry-run   list what would be replayed; publish and commit nothing
  --limit N   replay at most N dead letters
  --brokers   Kafka brokers (default: KAFKA_BROKERS)

Prints one JSON line per dead letter, then a summary line.`;

/** The command line of the replay; returns the process exit code. */
export async function main(argv: string[], env: Record<string, string | undefined> = process.env): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: {
        topic: { type: "string" },
        group: { type: "string" },
        "dry-run": { type: "boolean", default: false },
        limit: { type: "string" },
        brokers: { type: "string" },
        help: { type: "boolean", default: false },
      },
    }).values;
  } catch (err) {
    console.error(`${(err as Error).message}\n\n${usage}`);
    return 2;
  }
  if (args.help) {
    console.log(usage);
    return 0;
  }
  const brokers = (args.brokers ?? env.KAFKA_BROKERS ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  const limit = args.limit === undefined ? undefined : Number(args.limit);
  if (brokers.length === 0 || (limit !== undefined && (!Number.isInteger(limit) || limit < 1))) {
    console.error(
      `${brokers.length === 0 ? "say where Kafka is: --brokers or KAFKA_BROKERS" : "--limit must be a whole number of at least 1"}\n\n${usage}`,
    );
    return 2;
  }
  const topic = args.topic ?? env.PROCESSING_DLQ_TOPIC ?? "document.events.dlq";
  const report = await replayDeadLetters({
    kafka: createKafka({ brokers, clientId: "dlq-replay" }),
    dlqTopic: topic,
    groupId: args.group,
    dryRun: args["dry-run"],
    limit,
    onMessage: (m) => console.log(JSON.stringify(m)),
  });
  console.log(JSON.stringify({ topic, dryRun: args["dry-run"], ...report }));
  return 0;
}

if (isEntryPoint(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(`replay failed: ${(err as Error).message}`);
      process.exit(1);
    },
  );
}
