import type { KyselyPlugin } from "kysely";

/**
 * Calls `onQuery` as each statement is compiled for sending, leaving the query as it is. Tests
 * use it to count what the service asks of the database, e.g. that watchers share one poll.
 */
export function queryCounter(onQuery: () => void): KyselyPlugin {
  return {
    transformQuery(args) {
      onQuery();
      return args.node;
    },
    transformResult: async (args) => args.result,
  };
}
