import { once } from "node:events";
import {
  create,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescMethod,
  type DescService,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type CallOptions, type Client } from "@connectrpc/connect";
import {
  Client as GrpcClient,
  credentials,
  Metadata,
  status as Status,
  type ClientOptions,
  type StatusObject,
} from "@grpc/grpc-js";
import { context, propagation, SpanKind, SpanStatusCode, trace, type Attributes, type Span } from "@opentelemetry/api";
import { childIds } from "../telemetry/span-ids.js";
import { tracingMode } from "../telemetry/tracing-mode.js";
import { currentCall } from "./call-context.js";
import { fromGrpcError } from "./errors.js";
import { headersToMetadata, metadataToHeaders } from "./metadata.js";

export interface MeshClientOptions {
  /** Deadline for calls that set none and are not made from inside another call. */
  defaultTimeoutMs?: number;
  maxMessageBytes?: number;
  /** Sent with every call (e.g. authorization); a call's own headers win. */
  headers?: HeadersInit;
  /** Extra grpc-js channel options. */
  channelOptions?: Partial<ClientOptions>;
}

const tracer = trace.getTracer("medmesh-rpc");

function serviceConfig(service: DescService): string {
  // Only methods the contract marks free of side effects (or idempotent) may be retried:
  // a retried write could apply twice.
  const retryable = service.methods
    .filter((m) => m.methodKind === "unary" && m.idempotency !== MethodOptions_IdempotencyLevel.IDEMPOTENCY_UNKNOWN)
    .map((m) => ({ service: service.typeName, method: m.name }));
  return JSON.stringify({
    loadBalancingConfig: [{ round_robin: {} }],
    methodConfig: retryable.length
      ? [
          {
            name: retryable,
            retryPolicy: {
              maxAttempts: 3,
              initialBackoff: "0.05s",
              maxBackoff: "0.5s",
              backoffMultiplier: 2,
              retryableStatusCodes: ["UNAVAILABLE"],
            },
          },
        ]
      : [],
  });
}

function serializer(schema: DescMessage) {
  return (m: MessageShape<DescMessage>) => Buffer.from(toBinary(schema, m));
}

function deserializer(schema: DescMessage) {
  return (b: Buffer) => fromBinary(schema, b);
}

interface Prepared {
  metadata: Metadata;
  deadline: number | undefined;
  signal: AbortSignal | undefined;
  /** Undefined unless spans are exported: see `traceCall`. */
  span: Span | undefined;
  options: CallOptions | undefined;
}

const metadataSetter = { set: (md: Metadata, k: string, v: string) => md.set(k, v) };

/** `a` and `b` are each a timeout in ms or undefined; the shorter one, never below zero. */
function shorter(a: number | undefined, b: number | undefined): number | undefined {
  const x = typeof a === "number" && !Number.isNaN(a) ? a : undefined;
  const y = typeof b === "number" && !Number.isNaN(b) ? b : undefined;
  if (x === undefined) return y === undefined ? undefined : Math.max(0, y);
  return Math.max(0, y === undefined ? x : Math.min(x, y));
}

/**
 * The client side of the trace, doing no more than the process's telemetry needs (as the server
 * interceptor does, platform/grpc/interceptors/tracing.ts): nothing without an SDK; with one that
 * exports nowhere, only a span id of its own sent as traceparent; a real client span only when
 * spans are exported.
 */
function traceCall(method: DescMethod, metadata: Metadata): Span | undefined {
  const mode = tracingMode();
  if (mode === "off") return undefined;
  const active = context.active();
  if (mode === "ids") {
    propagation.inject(trace.setSpan(active, trace.wrapSpanContext(childIds(active))), metadata, metadataSetter);
    return undefined;
  }
  const span = tracer.startSpan(
    `${method.parent.typeName}/${method.name}`,
    { kind: SpanKind.CLIENT, attributes: spanAttributes(method) },
    active,
  );
  propagation.inject(trace.setSpan(active, span), metadata, metadataSetter);
  return span;
}

const attributesByMethod = new WeakMap<DescMethod, Attributes>();

function spanAttributes(method: DescMethod): Attributes {
  let a = attributesByMethod.get(method);
  if (!a) {
    a = Object.freeze({ "rpc.system": "grpc", "rpc.service": method.parent.typeName, "rpc.method": method.name });
    attributesByMethod.set(method, a);
  }
  return a;
}

/**
 * The metadata of one call: the client's own headers (converted once, when the client is made),
 * with the call's headers replacing any of the same name.
 */
function callMetadata(base: Metadata, own: HeadersInit | undefined): Metadata {
  const md = base.clone();
  if (own === undefined) return md;
  const headers = new Headers(own);
  headers.forEach((_v, k) => md.remove(k));
  return headersToMetadata(headers, md);
}

/**
 * Per-call setup shared by every streaming kind: the deadline (the caller's, else what remains
 * of the call we are serving, else the default), cancellation, headers and the trace context
 * travelling as traceparent.
 */
function prepare(
  method: DescMethod,
  options: CallOptions | undefined,
  defaultTimeoutMs: number | undefined,
  baseMetadata: Metadata,
): Prepared {
  const parent = currentCall();
  const parentRemaining = parent?.timeoutMs();
  // A timeout of zero or less has already expired (as in Connect): it must not read as "none",
  // or a call forwarded after its caller's deadline passed would run with no deadline at all.
  const own = options?.timeoutMs;
  const timeout = shorter(own, own === undefined && parentRemaining === undefined ? defaultTimeoutMs : parentRemaining);
  const metadata = callMetadata(baseMetadata, options?.headers);
  const span = traceCall(method, metadata);
  const mine = options?.signal;
  const inherited = parent?.signal;
  return {
    metadata,
    deadline: timeout === undefined ? undefined : Date.now() + timeout,
    signal: mine && inherited ? AbortSignal.any([mine, inherited]) : (mine ?? inherited),
    span,
    options,
  };
}

function finish(p: Prepared, err?: unknown) {
  const span = p.span;
  if (!span) return;
  if (err) {
    const ce = fromGrpcError(err);
    span.setAttribute("rpc.grpc.status_code", ce.code);
    span.setStatus({ code: SpanStatusCode.ERROR, message: ce.rawMessage });
  } else {
    span.setAttribute("rpc.grpc.status_code", 0);
  }
  span.end();
}

/**
 * Links a grpc-js call to the caller's signal and header callbacks. Returns what the call
 * failed with, if it did: grpc-js emits a streaming call's failure as an 'error' event, possibly
 * before anyone reads the stream (a request refused at once, a signal that had already fired),
 * and an 'error' with no listener ends the process. The listener here makes every such failure
 * an answer, which the reader rethrows (readAll).
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- grpc-js overloads its event signatures
function wireCall(p: Prepared, call: { cancel(): void; on(e: string, f: (...a: any[]) => void): unknown }) {
  let failure: unknown;
  call.on("error", (err: unknown) => (failure ??= err));
  if (p.signal) {
    if (p.signal.aborted) call.cancel();
    else p.signal.addEventListener("abort", () => call.cancel(), { once: true });
  }
  const onHeader = p.options?.onHeader;
  const onTrailer = p.options?.onTrailer;
  if (onHeader) call.on("metadata", (md: Metadata) => onHeader(metadataToHeaders(md)));
  if (onTrailer) call.on("status", (s: StatusObject) => onTrailer(metadataToHeaders(s.metadata)));
  return { failure: () => failure };
}

/**
 * A call we cancelled because the deadline of the call being served ran out failed for that
 * reason; grpc-js only knows it as CANCELLED, "Cancelled on client", which would turn a
 * gateway deadline into 499 canceled. Other reasons (the caller went away, shutdown) stay
 * cancellations: nobody is waiting for a more precise answer.
 */
function whySignalled(p: Prepared, err: unknown): ConnectError | undefined {
  if (!p.signal?.aborted || (err as Partial<StatusObject> | undefined)?.code !== Status.CANCELLED) return undefined;
  const reason: unknown = p.signal.reason;
  return reason instanceof ConnectError && reason.code === Code.DeadlineExceeded ? reason : undefined;
}

/**
 * Writes a request stream into a call. If producing the input fails (a message the caller's
 * own validation rejects, say), the call is cancelled and that error, not "cancelled", is what
 * the caller sees: the input error is the reason the call ended.
 * Once the call has its status (the server answered early, the deadline passed) the rest of
 * the input is moot: the pump stops, rather than waiting for a 'drain' that will never come.
 */
function pumpInto(
  input: AsyncIterable<unknown>,
  schema: DescMessage,
  stream: NodeJS.WritableStream & { write(m: unknown): boolean; end(): void; cancel(): void },
): { failure: () => unknown } {
  let failure: unknown;
  const over = new AbortController();
  stream.once("status", () => over.abort());
  void (async () => {
    try {
      for await (const init of input) {
        if (over.signal.aborted) return;
        if (!stream.write(create(schema, init as MessageInitShape<DescMessage>)))
          await once(stream as never, "drain", { signal: over.signal });
      }
      if (!over.signal.aborted) stream.end();
    } catch (err) {
      if (over.signal.aborted) return;
      failure = err;
      stream.cancel();
    }
  })();
  return { failure: () => failure };
}

async function* readAll(
  p: Prepared,
  stream: AsyncIterable<unknown> & { cancel(): void },
  callFailure: () => unknown,
  mapError: (err: unknown) => Error,
  inputFailure: () => unknown = () => undefined,
): AsyncIterable<unknown> {
  let settled = false;
  try {
    for await (const m of stream) yield m;
    // A failure emitted before this generator was first pulled is not replayed by the stream,
    // which merely ends: without this check a refused call would read as a complete, empty one.
    const failed = callFailure();
    if (failed !== undefined) throw failed;
    settled = true;
    finish(p);
  } catch (err) {
    settled = true;
    const cause = inputFailure() ?? err;
    finish(p, cause);
    throw inputFailure() !== undefined ? ConnectError.from(cause) : mapError(err);
  } finally {
    // The reader stopped early (break, return): destroying the stream does not end a grpc-js
    // call, which would sit on the server, stalled by flow control, until its deadline.
    if (!settled) {
      stream.cancel();
      finish(p, new ConnectError("the caller stopped reading", Code.Canceled));
    }
  }
}

/**
 * A typed client (the same shape as a Connect promise client) over a grpc-js channel: keepalive,
 * round_robin over every address the target resolves to, retries for idempotent methods,
 * deadline propagation and trace context.
 */
export function createMeshClient<S extends DescService>(
  service: S,
  target: string,
  opts: MeshClientOptions = {},
): Client<S> & { close(): void } {
  const max = opts.maxMessageBytes ?? 8 * 1024 * 1024;
  const channel = new GrpcClient(target, credentials.createInsecure(), {
    "grpc.service_config": serviceConfig(service),
    "grpc.enable_retries": 1,
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.max_receive_message_length": max,
    "grpc.max_send_message_length": max,
    ...opts.channelOptions,
  });
  // grpc-js describes a refused connection in load-balancer terms and its own deadline with
  // timings and the peer's address; callers get a plain sentence.
  const fromGrpc = (p: Prepared) => (err: unknown) => {
    const signalled = whySignalled(p, err);
    if (signalled) return signalled;
    const ce = fromGrpcError(err);
    if (
      ce.code === Code.Unavailable &&
      /No connection established|ECONNREFUSED|Name resolution failed/.test(ce.rawMessage)
    ) {
      return new ConnectError(`${service.name} is unavailable right now; try again shortly`, Code.Unavailable);
    }
    if (ce.code === Code.DeadlineExceeded && /^Deadline exceeded after/.test(ce.rawMessage)) {
      return new ConnectError(`the deadline expired before ${service.name} answered`, Code.DeadlineExceeded);
    }
    return ce;
  };
  const baseMetadata = headersToMetadata(new Headers(opts.headers));
  const client: Record<string, unknown> = { close: () => channel.close() };
  for (const method of service.methods) {
    const path = `/${service.typeName}/${method.name}`;
    const ser = serializer(method.input);
    const de = deserializer(method.output);
    switch (method.methodKind) {
      case "unary":
        client[method.localName] = (init: MessageInitShape<DescMessage>, options?: CallOptions) => {
          const p = prepare(method, options, opts.defaultTimeoutMs, baseMetadata);
          return new Promise((resolve, reject) => {
            const call = channel.makeUnaryRequest(
              path,
              ser,
              de,
              create(method.input, init),
              p.metadata,
              { deadline: p.deadline },
              (err, res) => {
                finish(p, err ?? undefined);
                if (err) reject(fromGrpc(p)(err));
                else resolve(res);
              },
            );
            wireCall(p, call);
          });
        };
        break;
      case "server_streaming":
        client[method.localName] = (init: MessageInitShape<DescMessage>, options?: CallOptions) => {
          const p = prepare(method, options, opts.defaultTimeoutMs, baseMetadata);
          const call = channel.makeServerStreamRequest(path, ser, de, create(method.input, init), p.metadata, {
            deadline: p.deadline,
          });
          const wired = wireCall(p, call);
          return readAll(p, call, wired.failure, fromGrpc(p));
        };
        break;
      case "client_streaming":
        client[method.localName] = (input: AsyncIterable<unknown>, options?: CallOptions) => {
          const p = prepare(method, options, opts.defaultTimeoutMs, baseMetadata);
          return new Promise((resolve, reject) => {
            let pump: { failure: () => unknown } | undefined;
            const call = channel.makeClientStreamRequest(
              path,
              ser,
              de,
              p.metadata,
              { deadline: p.deadline },
              (err, res) => {
                const inputFailure = pump?.failure();
                finish(p, inputFailure ?? err ?? undefined);
                if (inputFailure !== undefined) reject(ConnectError.from(inputFailure));
                else if (err) reject(fromGrpc(p)(err));
                else resolve(res);
              },
            );
            wireCall(p, call);
            pump = pumpInto(input, method.input, call as never);
          });
        };
        break;
      case "bidi_streaming":
        client[method.localName] = (input: AsyncIterable<unknown>, options?: CallOptions) => {
          const p = prepare(method, options, opts.defaultTimeoutMs, baseMetadata);
          const call = channel.makeBidiStreamRequest(path, ser, de, p.metadata, { deadline: p.deadline });
          const wired = wireCall(p, call);
          const pump = pumpInto(input, method.input, call as never);
          return readAll(p, call, wired.failure, fromGrpc(p), pump.failure);
        };
        break;
    }
  }
  return client as Client<S> & { close(): void };
}
