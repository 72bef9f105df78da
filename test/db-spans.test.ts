import { randomBytes } from "node:crypto";
import { SpanKind, SpanStatusCode, TraceFlags, context, trace } from "@opentelemetry/api";
import { InMemorySpanExporter } from "@opentelemetry/sdk-trace-base";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDatabase, type Database } from "../platform/db/database.js";
import { startTelemetry } from "../platform/telemetry/sdk.js";
import { setTracingMode, tracingMode } from "../platform/telemetry/tracing-mode.js";

const spans = new InMemorySpanExporter();
const telemetry = startTelemetry({ serviceName: "db-spans-test", exporter: spans, logLevel: "error" });
const tracer = trace.getTracer("db-spans-test");

describe("the traced database driver", () => {
  let database: Database<{ item: { id: number } }>;
  const schema = `spans_t${randomBytes(4).toString("hex")}`;

  beforeAll(async () => {
    database = await openDatabase({ dataDir: "memory://", schema });
    await database.db.schema.createTable("item").addColumn("id", "integer").execute();
  });

  afterAll(async () => {
    await database?.close();
    await telemetry.shutdown();
  });

  it("records each statement as a client span under the active span, with its text and no values", async () => {
    spans.reset();
    const parent = await tracer.startActiveSpan("request", async (span) => {
      await database.db.selectFrom("item").select("id").where("id", "=", 424242).execute();
      span.end();
      return span.spanContext();
    });
    const db = spans.getFinishedSpans().filter((s) => s.attributes["db.system"] === "postgresql");
    expect(db).toHaveLength(1);
    const [span] = db;
    expect(span!.name).toBe(`SELECT ${schema}`);
    expect(span!.kind).toBe(SpanKind.CLIENT);
    expect(span!.parentSpanContext?.spanId).toBe(parent.spanId);
    expect(span!.spanContext().traceId).toBe(parent.traceId);
    expect(String(span!.attributes["db.statement"])).toContain(`"${schema}"."item"`);
    expect(String(span!.attributes["db.statement"])).not.toContain("424242");
  });

  it("marks a failed statement as an error", async () => {
    spans.reset();
    await expect(sql`select * from no_such_table`.execute(database.db)).rejects.toThrow();
    const [span] = spans.getFinishedSpans().filter((s) => s.attributes["db.system"] === "postgresql");
    expect(span!.status.code).toBe(SpanStatusCode.ERROR);
  });

  it("starts no span under a parent that records nothing (sampled out upstream)", async () => {
    spans.reset();
    const sampledOut = trace.wrapSpanContext({
      traceId: "0af7651916cd43dd8448eb211c80319c",
      spanId: "b7ad6b7169203331",
      traceFlags: TraceFlags.NONE,
    });
    await context.with(trace.setSpan(context.active(), sampledOut), () =>
      database.db.selectFrom("item").select("id").execute(),
    );
    expect(spans.getFinishedSpans().filter((s) => s.attributes["db.system"] === "postgresql")).toHaveLength(0);
  });

  it("starts no span when spans go nowhere (tracing mode ids), and does again once they are exported", async () => {
    const dbSpans = () => spans.getFinishedSpans().filter((s) => s.attributes["db.system"] === "postgresql");
    const run = () =>
      tracer.startActiveSpan("request", async (span) => {
        await database.db.selectFrom("item").select("id").execute();
        span.end();
      });
    const mode = tracingMode();
    spans.reset();
    setTracingMode("ids");
    try {
      await run();
    } finally {
      setTracingMode(mode);
    }
    expect(dbSpans()).toHaveLength(0);
    await run();
    expect(dbSpans()).toHaveLength(1);
  });
});
