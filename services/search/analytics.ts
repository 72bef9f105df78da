import { createHmac } from "node:crypto";
import { fromBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { sql, type Kysely } from "kysely";
import type { Producer } from "kafkajs";
import { SearchPerformedSchema } from "../../gen/medmesh/events/v1/search_events_pb.js";
import {
  contractEvent,
  eventKind,
  isEventOf,
  newEvent,
  PoisonMessageError,
  toKafkaMessage,
  type EventEnvelope,
  type EventHandler,
} from "../../platform/events/index.js";
import type { Logger } from "../../platform/telemetry/logger.js";
import type { SearchDB } from "./tables.js";

export interface SearchRecord {
  normalizedQuery: string;
  filters: unknown;
  resultCount: number;
  ranker: string;
  latencyMs: number;
  subject: string;
  cached: boolean;
}

/**
 * Publishes one SearchPerformed per answered search, straight to Kafka and without waiting: an
 * analytics event changes no state, so there is no transaction to tie it to (the outbox would be
 * a database write for every read), and losing one when the broker is down costs a count, not data.
 */
export function searchAnalytics(opts: { producer: Producer; callerKey: string; log: Logger }) {
  const hashCaller = (subject: string) =>
    createHmac("sha256", opts.callerKey).update(subject).digest("base64url").slice(0, 22);
  return {
    record(r: SearchRecord): void {
      const filters = JSON.stringify(r.filters);
      const out = contractEvent(
        SearchPerformedSchema,
        {
          normalizedQuery: r.normalizedQuery,
          filters: filters === "{}" ? "" : filters,
          resultCount: BigInt(r.resultCount),
          ranker: r.ranker,
          latency: { seconds: BigInt(Math.floor(r.latencyMs / 1000)), nanos: Math.round((r.latencyMs % 1000) * 1e6) },
          callerHash: hashCaller(r.subject),
          cached: r.cached,
          searchTime: timestampFromMs(Date.now()),
        },
        { source: "/medmesh/search", key: hashCaller(r.subject) },
      );
      const event = newEvent(out);
      opts.producer
        .send({ topic: out.topic, messages: [toKafkaMessage(event)] })
        .catch((err: Error) => opts.log.debug("a search analytics event was not published", { error: err }));
    },
  };
}

const PERFORMED = eventKind(SearchPerformedSchema);

/** The analytics consumer: each SearchPerformed adds one to its hour and query. */
export const statsConsumer: {
  handles: (event: EventEnvelope) => boolean;
  handler: EventHandler<SearchDB, undefined>;
} = {
  handles: (event) => isEventOf(event, SearchPerformedSchema),
  async handler(event, trx) {
    if (event.contentType !== PERFORMED.contentType)
      throw new PoisonMessageError(`${PERFORMED.type} with content-type "${event.contentType.slice(0, 100)}"`);
    let e;
    try {
      e = fromBinary(SearchPerformedSchema, event.payload);
    } catch (err) {
      throw new PoisonMessageError(`the SearchPerformed payload does not decode: ${(err as Error).message}`);
    }
    const at = e.searchTime ? new Date(Number(e.searchTime.seconds) * 1000) : event.time;
    const zero = e.resultCount === 0n ? 1 : 0;
    await trx
      .insertInto("search_stat")
      .values({
        hour: sql<Date>`date_trunc('hour', ${at.toISOString()}::timestamptz)`,
        normalized_query: e.normalizedQuery.slice(0, 500),
        searches: 1,
        zero_results: zero,
      })
      .onConflict((oc) =>
        oc.columns(["hour", "normalized_query"]).doUpdateSet({
          searches: sql<number>`search_stat.searches + 1`,
          zero_results: sql<number>`search_stat.zero_results + ${zero}`,
        }),
      )
      .execute();
  },
};

/**
 * Top and zero-result queries over [start, end). The three reads share one snapshot: read side by
 * side, a count landing between them made the lists disagree about the same query.
 */
export async function readAnalytics(db: Kysely<SearchDB>, start: Date, end: Date, limit: number) {
  const { top, zero, total } = await db
    .transaction()
    .setIsolationLevel("repeatable read")
    .execute(async (trx) => {
      const inWindow = trx.selectFrom("search_stat").where("hour", ">=", start).where("hour", "<", end);
      const top = await inWindow
        .select(["normalized_query", sql<number>`sum(searches)::int`.as("n")])
        .groupBy("normalized_query")
        .orderBy("n", "desc")
        .orderBy("normalized_query")
        .limit(limit)
        .execute();
      const zero = await inWindow
        .select(["normalized_query", sql<number>`sum(zero_results)::int`.as("n")])
        .groupBy("normalized_query")
        .having(sql`sum(zero_results)`, ">", 0)
        .orderBy("n", "desc")
        .orderBy("normalized_query")
        .limit(limit)
        .execute();
      const total = await inWindow.select(sql<number>`coalesce(sum(searches), 0)::int`.as("n")).executeTakeFirst();
      return { top, zero, total };
    });
  return {
    topQueries: top.map((r) => ({ normalizedQuery: r.normalized_query, count: BigInt(r.n) })),
    zeroResultQueries: zero.map((r) => ({ normalizedQuery: r.normalized_query, count: BigInt(r.n) })),
    totalSearches: BigInt(total?.n ?? 0),
  };
}
