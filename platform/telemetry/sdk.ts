import { NodeSDK } from "@opentelemetry/sdk-node";
import {
  BatchSpanProcessor,
  NoopSpanProcessor,
  SimpleSpanProcessor,
  type SpanExporter,
  type SpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { configureLogging, type Level } from "./logger.js";
import { setTracingMode } from "./tracing-mode.js";

export interface TelemetryOptions {
  serviceName: string;
  logLevel?: Level;
  /** OTLP/HTTP endpoint; without one, spans are created (log lines carry trace ids) but not exported. */
  otlpEndpoint?: string;
  /** Tests pass an in-memory exporter; spans go to it synchronously. */
  exporter?: SpanExporter;
}

let sdk: NodeSDK | undefined;

/** Telemetry as every component's validated config describes it (LOG_LEVEL, OTEL_EXPORTER_OTLP_ENDPOINT). */
export function startComponentTelemetry(
  serviceName: string,
  config: { LOG_LEVEL: Level; OTEL_EXPORTER_OTLP_ENDPOINT?: string },
): { shutdown(): Promise<void> } {
  return startTelemetry({ serviceName, logLevel: config.LOG_LEVEL, otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT });
}

/**
 * Starts OpenTelemetry once per process. Spans come from the mesh's own RPC interceptors and
 * the traced database driver (see platform/db), which cover the mesh's gRPC transport,
 * connect-node and PGlite alike; the SDK supplies context propagation, W3C trace context and export.
 */
export function startTelemetry(opts: TelemetryOptions): { shutdown(): Promise<void> } {
  configureLogging({ service: opts.serviceName, level: opts.logLevel });
  if (sdk) return { shutdown: async () => {} };
  const processors: SpanProcessor[] = [];
  if (opts.exporter) processors.push(new SimpleSpanProcessor(opts.exporter));
  if (opts.otlpEndpoint) {
    processors.push(
      new BatchSpanProcessor(new OTLPTraceExporter({ url: new URL("/v1/traces", opts.otlpEndpoint).toString() })),
    );
  }
  // With nothing to export to, NodeSDK would register no tracer provider at all: spans would have
  // all-zero ids, logs no trace_id and outgoing calls no traceparent. A processor that drops
  // finished spans keeps ids and propagation real at almost no cost.
  if (processors.length === 0) processors.push(new NoopSpanProcessor());
  sdk = new NodeSDK({
    resource: resourceFromAttributes({ "service.name": opts.serviceName }),
    spanProcessors: processors,
    instrumentations: [],
    // Metrics are served as Prometheus text by the mesh itself; logs are JSON lines on stdout.
    metricReader: undefined,
  });
  sdk.start();
  setTracingMode(opts.exporter || opts.otlpEndpoint ? "spans" : "ids");
  const started = sdk;
  return {
    async shutdown() {
      setTracingMode("off");
      await started.shutdown().catch(() => undefined);
      sdk = undefined;
    },
  };
}
