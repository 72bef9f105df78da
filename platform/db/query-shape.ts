import type { Compilable, CompiledQuery, Kysely, QueryResult } from "kysely";

/** Stands in for the n-th argument while a shape is built; kysely carries it into the parameter list untouched. */
class Placeholder {
  constructor(readonly index: number) {}
}

/** Where each bound parameter of the compiled statement comes from: an argument, or a value fixed by the shape. */
type Binding = { arg: number } | { fixed: unknown };

export interface QueryShape<Args extends unknown[], Row> {
  /** Runs the statement with these arguments on `db`, which may be a transaction of the database the shape was built on. */
  execute(db: Kysely<any>, ...args: Args): Promise<QueryResult<Row>>;
  /** The first row, or undefined. */
  first(db: Kysely<any>, ...args: Args): Promise<Row | undefined>;
}

/**
 * A statement whose text depends only on its shape, not on its values, built and compiled once
 * (query building, the schema plugin's rewrite and SQL generation cost more than the round trip
 * on a hot read) and then bound to each call's arguments. `build` receives stand-ins for the
 * arguments and must pass each into the query as a value (a where operand, a set or insert
 * value); it is checked at the first call that every argument arrived as a bound parameter, so
 * a shape that would bake one caller's value into the text fails loudly instead.
 *
 * The SQL is compiled against `db` on first use; the executor passed to each call must share its
 * dialect and schema (the database itself or one of its transactions).
 */
export function queryShape<Args extends unknown[], Row>(
  db: () => Kysely<any>,
  arity: Args["length"],
  build: (db: Kysely<any>, ...args: Args) => Compilable<Row>,
): QueryShape<Args, Row> {
  let compiled: { sql: string; query: CompiledQuery["query"]; bindings: Binding[] } | undefined;

  const compile = () => {
    const stands = Array.from({ length: arity }, (_, i) => new Placeholder(i));
    const template = build(db(), ...(stands as unknown as Args)).compile();
    const bindings: Binding[] = template.parameters.map((p) =>
      p instanceof Placeholder ? { arg: p.index } : { fixed: p },
    );
    for (const stand of stands) {
      if (!bindings.some((b) => "arg" in b && b.arg === stand.index))
        throw new Error(`query shape: argument ${stand.index} did not become a bound parameter of ${template.sql}`);
    }
    return { sql: template.sql, query: template.query, bindings };
  };

  const execute = (executor: Kysely<any>, ...args: Args) => {
    compiled ??= compile();
    const bindings = compiled.bindings;
    const parameters = new Array<unknown>(bindings.length);
    for (let i = 0; i < bindings.length; i++) {
      const b = bindings[i]!;
      parameters[i] = "arg" in b ? args[b.arg] : b.fixed;
    }
    const query: CompiledQuery<Row> = {
      sql: compiled.sql,
      query: compiled.query,
      parameters,
      // Plugins may key per-execution state on this object, so each execution gets its own.
      queryId: { queryId: "" },
    };
    return executor.executeQuery(query);
  };

  return {
    execute,
    async first(executor, ...args) {
      return (await execute(executor, ...args)).rows[0];
    },
  };
}
