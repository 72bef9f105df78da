import { SpanKind, SpanStatusCode, trace, type SpanOptions } from "@opentelemetry/api";
import type { CompiledQuery, DatabaseConnection, Dialect, Driver, QueryResult } from "kysely";
import { tracingMode } from "../telemetry/tracing-mode.js";

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

interface StatementSpan {
  name: string;
  options: SpanOptions;
}

/** Span names and attributes per statement text; statements come in a few shapes, so most calls find theirs here. */
const statementSpans = new Map<string, StatementSpan>();
/** Text with values inlined (raw SQL) would grow the cache without end; past this it starts over. */
const MAX_CACHED_STATEMENTS = 512;

function statementSpan(dbName: string, statement: string): StatementSpan {
  const key = `${dbName}\0${statement}`;
  let known = statementSpans.get(key);
  if (!known) {
    const operation = statement.trimStart().split(/\s+/, 1)[0]?.toUpperCase() || "SQL";
    known = {
      name: `${operation} ${dbName}`,
      options: {
        kind: SpanKind.CLIENT,
        attributes: {
          "db.system": "postgresql",
          "db.name": dbName,
          "db.statement": statement,
          "db.operation": operation,
        },
      },
    };
    if (statementSpans.size >= MAX_CACHED_STATEMENTS) statementSpans.clear();
    statementSpans.set(key, known);
  }
  return known;
}

/**
 * The span is a child of whatever is active but is not made active itself: nothing runs inside a
 * statement that could start spans or log, and entering a context per statement is a large share
 * of a cheap read. So when spans go nowhere (tracing mode "ids": ids for logs and propagation,
 * nothing exported), a statement's span would be read by nobody and is not started; nor under a
 * parent that records nothing (sampled out).
 */
function traced<R>(dbName: string, q: CompiledQuery, run: () => Promise<QueryResult<R>>): Promise<QueryResult<R>> {
  if (tracingMode() !== "spans") return run();
  const parent = trace.getActiveSpan();
  if (parent && !parent.isRecording()) return run();
  const { name, options } = statementSpan(dbName, q.sql);
  const span = tracer.startSpan(name, options);
  return run().then(
    (result) => {
      span.end();
      return result;
    },
    (err: unknown) => {
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
      span.end();
      throw err;
    },
  );
}
