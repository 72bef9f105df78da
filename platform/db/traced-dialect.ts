import { SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import type { CompiledQuery, DatabaseConnection, Dialect, Driver, QueryResult } from "kysely";

const tracer = trace.getTracer("medmesh-db");

/**
 * A span per SQL statement, at the Kysely driver, so pg over the wire and embedded PGlite are
 * traced the same way. The statement text is recorded; parameter values never are.
 */
export function tracedDialect(inner: Dialect, dbName: string): Dialect {
  return {
    createAdapter: () => inner.createAdapter(),
    createIntrospector: (db) => inner.createIntrospector(db),
    createQueryCompiler: () => inner.createQueryCompiler(),
    createDriver(): Driver {
      const driver = inner.createDriver();
      const wrapped = new WeakMap<DatabaseConnection, DatabaseConnection>();
      const originals = new WeakMap<DatabaseConnection, DatabaseConnection>();
      const unwrap = (c: DatabaseConnection) => originals.get(c) ?? c;
      return {
        init: () => driver.init(),
        destroy: () => driver.destroy(),
        async acquireConnection() {
          const conn = await driver.acquireConnection();
          let w = wrapped.get(conn);
          if (!w) {
            w = {
              executeQuery: <R>(q: CompiledQuery) => traced<R>(dbName, q, () => conn.executeQuery<R>(q)),
              streamQuery: <R>(q: CompiledQuery, chunk?: number) => conn.streamQuery<R>(q, chunk),
            };
            wrapped.set(conn, w);
            originals.set(w, conn);
          }
          return w;
        },
        beginTransaction: (c, s) => driver.beginTransaction(unwrap(c), s),
        commitTransaction: (c) => driver.commitTransaction(unwrap(c)),
        rollbackTransaction: (c) => driver.rollbackTransaction(unwrap(c)),
        releaseConnection: (c) => driver.releaseConnection(unwrap(c)),
      };
    },
  };
}

async function traced<R>(
  dbName: string,
  q: CompiledQuery,
  run: () => Promise<QueryResult<R>>,
): Promise<QueryResult<R>> {
  const operation = q.sql.trimStart().split(/\s+/, 1)[0]?.toUpperCase() ?? "SQL";
  return tracer.startActiveSpan(
    `${operation} ${dbName}`,
    {
      kind: SpanKind.CLIENT,
      attributes: { "db.system": "postgresql", "db.name": dbName, "db.statement": q.sql, "db.operation": operation },
    },
    async (span) => {
      try {
        return await run();
      } catch (err) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
        throw err;
      } finally {
        span.end();
      }
    },
  );
}
