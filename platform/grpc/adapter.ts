import { once } from "node:events";
import { constants as h2 } from "node:http2";
import type { Readable } from "node:stream";
import type { DescMessage, DescMethod, DescService, MessageShape } from "@bufbuild/protobuf";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextKey,
  createServiceImplSpec,
  type HandlerContext,
  type Interceptor,
  type MethodImplSpec,
  type ServiceImpl,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import { createAsyncIterable, transformInvokeImplementation } from "@connectrpc/connect/protocol";
import {
  ServerInterceptingCall,
  status as GrpcStatus,
  type ServerInterceptor,
  type Metadata,
  type sendUnaryData,
  type ServerDuplexStream,
  type ServerReadableStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceDefinition,
  type UntypedServiceImplementation,
} from "@grpc/grpc-js";
/** The part of every grpc-js server call the adapter uses, whatever the streaming kind. */
interface ServerSurfaceCall {
  readonly cancelled: boolean;
  getPeer(): string;
  readonly metadata: Metadata;
  sendMetadata(md: Metadata): void;
  getDeadline(): Date | number;
  on(event: "cancelled", listener: () => void): unknown;
}
import { runInCall } from "./call-context.js";
import { coarseTimers } from "./coarse-timer.js";
import { CallContext, callFinished, CallRequest, CallValues, trackUntilShutdown } from "./handler-context.js";
import { toConnectError, toGrpcStatus } from "./errors.js";
import { headersToMetadata, metadataToHeaders } from "./metadata.js";

export interface AdapterOptions {
  interceptors: Interceptor[];
  /** Unary calls without a deadline get the default; nobody gets more than the max. */
  deadlines?: { defaultUnaryMs: number; maxUnaryMs: number };
  /** Aborted when the server starts draining: long streams end instead of holding shutdown. */
  shutdownSignal: AbortSignal;
}

export interface GrpcService {
  definition: ServiceDefinition;
  implementation: UntypedServiceImplementation;
}

const passThrough = {
  serialize: (b: Buffer) => b,
  deserialize: (b: Buffer) => b,
};

/**
 * Serves a Connect-style ServiceImpl on grpc-js. The wire bytes are decoded here rather than by
 * grpc-js, so a malformed message becomes invalid_argument with a sentence instead of grpc-js'
 * generic internal error, and the same Connect interceptors run as in the gateway.
 */
export function toGrpcService(
  service: DescService,
  impl: Partial<ServiceImpl<DescService>>,
  opts: AdapterOptions,
): GrpcService {
  const spec = createServiceImplSpec(service, impl);
  const definition: Record<string, ServiceDefinition[string]> = {};
  const implementation: UntypedServiceImplementation = {};
  for (const method of service.methods) {
    const methodSpec = spec.methods[method.localName]!;
    const clientStreams = method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming";
    const serverStreams = method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming";
    definition[method.name] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: clientStreams,
      responseStream: serverStreams,
      requestSerialize: passThrough.serialize,
      requestDeserialize: passThrough.deserialize,
      responseSerialize: passThrough.serialize,
      responseDeserialize: passThrough.deserialize,
      originalName: method.localName,
    };
    implementation[method.name] = handlerFor(method, methodSpec, opts);
  }
  return { definition: definition as ServiceDefinition, implementation };
}

function decode<T extends DescMessage>(schema: T, bytes: Buffer): MessageShape<T> {
  try {
    return fromBinary(schema, bytes);
  } catch {
    throw new ConnectError(`the request is not a valid ${schema.typeName} message`, Code.InvalidArgument);
  }
}

/** The parts of grpc-js's own call object (private to grpc-js) that the adapter reads. */
interface GrpcJsCall {
  decoder?: { readState?: unknown };
  stream?: { closed?: boolean; close?: (code: number) => void };
}

/**
 * grpc-js's innermost call under a handler's call object: server interceptors (see
 * `requestArrivalBound`) wrap it, each keeping the next one as `nextCall`.
 */
function grpcJsCall(call: object): GrpcJsCall | undefined {
  let c = (call as { call?: unknown }).call;
  for (let depth = 0; depth < 8 && c && typeof c === "object"; depth++) {
    if ("stream" in c) return c as GrpcJsCall;
    c = (c as { nextCall?: unknown }).nextCall;
  }
  return undefined;
}

/**
 * Ends a call whose single request message has not arrived within `ms`, when the client set no
 * deadline. grpc-js calls a unary or server-streaming handler only once the request stream has
 * ended, so the default unary deadline the adapter applies never starts for a client that sends
 * its headers and then nothing (or half a message): without this, grpc-js holds that call for as
 * long as the connection lives. A client with a deadline of its own is held to it by grpc-js.
 */
export function requestArrivalBound(ms: number): ServerInterceptor {
  const timers = coarseTimers(Math.min(100, Math.max(1, Math.floor(ms / 10))));
  return (method, call) => {
    const deadline = call.getDeadline();
    if (method.requestStream || deadline instanceof Date || Number.isFinite(deadline))
      return new ServerInterceptingCall(call);
    let timer: object | undefined;
    const stop = () => timers.clear(timer);
    return new ServerInterceptingCall(call, {
      start(next) {
        timer = timers.set(ms, () =>
          call.sendStatus({
            code: GrpcStatus.DEADLINE_EXCEEDED,
            details: `the request did not arrive within the default deadline of ${ms} ms`,
          }),
        );
        next({
          onReceiveHalfClose(next) {
            stop();
            next();
          },
          onCancel: stop,
        });
      },
      sendStatus(status, next) {
        stop();
        next(status);
      },
    });
  };
}

/**
 * Refuses a request stream that ended partway through a frame. grpc-js cuts frames out of the
 * byte stream itself and, when the stream ends, drops an unfinished one without a word: a unary
 * call with a stray tail would be answered as if nothing were wrong, and a client stream cut off
 * mid-message (an upload) would end as if complete, short of its last message.
 *
 * grpc-js keeps its frame decoder private (`call.decoder`, `readState` 0 between frames). Should
 * that change, this stops refusing and test/service-hostile.test.ts says so.
 */
function assertWholeFrames(call: object): void {
  const decoder = grpcJsCall(call)?.decoder;
  if (typeof decoder?.readState === "number" && decoder.readState !== 0)
    throw new ConnectError("the request ended in the middle of a message", Code.InvalidArgument);
}

function encode(schema: DescMessage, message: unknown): Buffer {
  const bytes = toBinary(schema, message as MessageShape<DescMessage>);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** What every call of one method shares, worked out once when the service is registered. */
interface MethodPlan {
  method: DescMethod;
  url: string;
  shutdown: ReturnType<typeof trackUntilShutdown>;
  opts: AdapterOptions;
}

/** Server-side default deadlines are seconds long; firing them up to 50 ms late changes nothing. */
const defaultDeadlines = coarseTimers(50);

function contextFor(call: ServerSurfaceCall, plan: MethodPlan): CallContext {
  const { method, opts } = plan;
  const deadline = call.getDeadline();
  const deadlineMs = deadline instanceof Date ? deadline.getTime() : typeof deadline === "number" ? deadline : Infinity;
  let timeoutMs = Number.isFinite(deadlineMs) ? Math.max(0, deadlineMs - Date.now()) : undefined;
  // The effective deadline lives in the handler context, so handlers see it and every client
  // they call inherits it (see call-context.ts).
  const callerChose = timeoutMs !== undefined;
  if (opts.deadlines && method.methodKind === "unary") {
    timeoutMs = Math.min(timeoutMs ?? opts.deadlines.defaultUnaryMs, opts.deadlines.maxUnaryMs);
  }
  const ctx: CallContext = new CallContext(
    method,
    plan.url,
    call.metadata,
    new CallValues(call, peerOf),
    timeoutMs,
    (reason) => {
      plan.shutdown.remove(ctx);
      if (reason !== callFinished) resetIfStuck(call, reason);
    },
  );
  // grpc-js reports every stream's close as "cancelled", finished calls included; only a call
  // still running was cancelled, and only then is an error (with its stack) worth building.
  call.on("cancelled", () => ctx.cancel());
  plan.shutdown.add(ctx);
  ctx.arm(timeoutMs, callerChose ? undefined : defaultDeadlines);
  return ctx;
}

/** How long a call that was cut short may take to get its status to the client. */
const STATUS_GRACE_MS = 1_000;

/**
 * Resets the HTTP/2 stream of a call whose deadline passed (or that shutdown cut short) if its
 * status has not reached the client soon after. grpc-js sends the status as trailers, and
 * trailers wait behind any response bytes still queued; a client that stops reading (zero
 * flow-control window) therefore never gets them, and the stream, its buffered messages and the
 * client's wait outlive the deadline for as long as the connection does. RST_STREAM is not
 * flow-controlled: the client learns the call is over and the server lets go of it.
 *
 * grpc-js has no public way to reset a server stream; its call object keeps the http2 stream as
 * `call.stream`. If that ever moves, this does nothing and test/service-hostile.test.ts (a
 * reader with a zero window) fails.
 */
function resetIfStuck(call: ServerSurfaceCall, reason: unknown): void {
  if (reason === callFinished || call.cancelled) return;
  const timer = setTimeout(() => {
    if (call.cancelled) return;
    const stream = grpcJsCall(call)?.stream;
    if (stream && !stream.closed && typeof stream.close === "function") stream.close(h2.NGHTTP2_CANCEL);
  }, STATUS_GRACE_MS);
  timer.unref();
}

/**
 * Settles with the handler, or with the reason the call was cut short (deadline, cancellation,
 * shutdown) if that comes first: a handler that ignores its signal cannot hold a caller past
 * its deadline.
 *
 * `work` is a thunk so that a call whose signal has already fired (a deadline that expired in
 * transit, a 1 ms grpc-timeout) never starts it. Starting it and then answering with the abort
 * reason would leave its promise, which rejects on that same signal, with nobody to handle it:
 * an unhandled rejection, and Node ends the process.
 */
function untilAborted<T>(ctx: CallContext, work: () => Promise<T>): Promise<T> {
  if (ctx.cutShort) return Promise.reject(ConnectError.from(ctx.abortReason));
  return new Promise<T>((resolve, reject) => {
    ctx.onAbort = (reason) => reject(ConnectError.from(reason));
    // Whichever loses still has a handler when it settles: settling twice is a no-op.
    work().then(resolve, reject);
  });
}

async function lastOf(output: AsyncIterable<unknown>): Promise<unknown> {
  let last: unknown;
  for await (const m of output) last = m;
  return last;
}

function peerOf(call: ServerSurfaceCall): string {
  return peerAddress(call.getPeer());
}

/** grpc-js names peers "ipv4:1.2.3.4:5678", "ipv6:[::1]:5678" or "1.2.3.4:5678"; keep the address. */
function peerAddress(peer: string): string {
  const bare = peer.replace(/^ipv[46]:/, "");
  const m = /^\[(.*)\]:\d+$/.exec(bare) ?? /^(.*):\d+$/.exec(bare);
  return m ? m[1]! : bare;
}

function sendHeaderOnce(call: ServerSurfaceCall, ctx: CallContext, sent: { done: boolean }): void {
  if (sent.done) return;
  sent.done = true;
  const header = ctx.responseHeaderIfAny();
  if (header) call.sendMetadata(headersToMetadata(header));
}

async function* decodeStream<T extends DescMessage>(
  schema: T,
  call: Readable & { cancelled?: boolean },
): AsyncIterable<MessageShape<T>> {
  // Node destroys a stream once its async iterator completes; for a duplex call that would
  // also destroy the writable half before the status is sent, and the client would hang.
  for await (const chunk of call.iterator({ destroyOnReturn: false })) yield decode(schema, chunk as Buffer);
  // grpc-js ends the request stream when the client cancels, just as when it finishes sending;
  // a handler must not mistake a cancelled upload for a complete one.
  await new Promise((r) => setImmediate(r));
  if (call.cancelled) throw new ConnectError("the client cancelled the call", Code.Canceled);
  assertWholeFrames(call);
}

async function writeAll(
  call: ServerWritableStream<Buffer, Buffer> | ServerDuplexStream<Buffer, Buffer>,
  ctx: CallContext,
  output: AsyncIterable<unknown>,
  schema: DescMessage,
): Promise<void> {
  const sent = { done: false };
  try {
    for await (const message of output) {
      sendHeaderOnce(call, ctx, sent);
      if (call.cancelled) return;
      if (!call.write(encode(schema, message)))
        await once(call, "drain", { signal: ctx.signal }).catch(() => undefined);
    }
    sendHeaderOnce(call, ctx, sent);
    call.end(headersToMetadata(ctx.responseTrailer));
  } catch (err) {
    if (call.cancelled) return;
    call.emit("error", Object.assign(new Error("rpc failed"), toGrpcStatus(err, ctx.responseTrailerIfAny())));
  }
}

/**
 * grpc-js does not await its handlers, so the promise of every call's work is ours to settle.
 * The work answers every failure it expects itself; anything that still escapes is a bug to log,
 * not an unhandled rejection that would end the process and every other call in it.
 */
function detach(work: Promise<void>, method: DescMethod): void {
  work.catch((err: unknown) => toConnectError(err, `${method.parent.typeName}/${method.name} (adapter)`));
}

/** The single answer of a unary or client-streaming call: the message, or the status. */
function answerOnce(
  call: ServerSurfaceCall,
  ctx: CallContext,
  method: DescMethod,
  callback: sendUnaryData<Buffer>,
  work: () => Promise<unknown>,
): void {
  detach(
    runInCall(ctx, () =>
      untilAborted(ctx, work).then(
        (response) => {
          const header = ctx.responseHeaderIfAny();
          if (header) call.sendMetadata(headersToMetadata(header));
          const trailer = ctx.responseTrailerIfAny();
          callback(null, encode(method.output, response), trailer && headersToMetadata(trailer));
          ctx.finish();
        },
        (err: unknown) => {
          callback(toGrpcStatus(err, ctx.responseTrailerIfAny()));
          ctx.finish();
        },
      ),
    ),
    method,
  );
}

/**
 * A unary response whose headers are the call's own, made only when someone reads them
 * (connect's invoker reads both on every call).
 */
class UnaryAnswer {
  readonly stream = false;
  constructor(
    readonly ctx: CallContext,
    readonly message: UnaryResponse["message"],
    readonly method: DescMethod,
  ) {}
  get service() {
    return this.ctx.service;
  }
  get header() {
    return this.ctx.responseHeader;
  }
  get trailer() {
    return this.ctx.responseTrailer;
  }
}

const callKey = createContextKey<CallContext | undefined>(undefined, { description: "medmesh grpc-js call" });

/** The context a handler gets: the call's own, unless an interceptor replaced parts of the request. */
function handlerContextFor(ctx: CallContext, req: UnaryRequest): HandlerContext {
  // A CallRequest reads everything from its call; an interceptor that changes a part makes a new object.
  if (req instanceof CallRequest && req.ctx === ctx) return ctx;
  return Object.create(ctx, {
    requestHeader: { value: req.header },
    signal: { value: req.signal },
    values: { value: req.contextValues },
  }) as HandlerContext;
}

function copyHeaders(from: Headers, to: Headers): void {
  if (from === to) return;
  const old: string[] = [];
  to.forEach((_v, k) => old.push(k));
  for (const k of old) to.delete(k);
  from.forEach((v, k) => to.set(k, v));
}

/**
 * Connect's invokeUnaryImplementation, with the interceptor chain built once per method instead
 * of on every call, and the response headers left alone unless something set them.
 */
function unaryInvoker(spec: MethodImplSpec & { kind: "unary" }, interceptors: Interceptor[]) {
  const { method } = spec;
  const answer = (ctx: CallContext, out: unknown) =>
    new UnaryAnswer(ctx, create(method.output, out as never), method) as unknown as UnaryResponse;
  // Not async: a handler that answers synchronously (as many do) costs no extra promise.
  const terminal = (req: UnaryRequest): Promise<UnaryResponse> => {
    const ctx = req instanceof CallRequest ? req.ctx : req.contextValues.get(callKey)!;
    try {
      const out: unknown = spec.impl(req.message as never, handlerContextFor(ctx, req));
      if (typeof (out as PromiseLike<unknown> | undefined)?.then === "function")
        return Promise.resolve(out).then((o) => answer(ctx, o));
      return Promise.resolve(answer(ctx, out));
    } catch (err) {
      return Promise.reject(err);
    }
  };
  let chain: (req: UnaryRequest) => Promise<UnaryResponse> = terminal;
  for (let i = interceptors.length - 1; i >= 0; i--) chain = interceptors[i]!(chain as never) as typeof chain;
  return (ctx: CallContext, input: unknown): Promise<unknown> => {
    ctx.values.set(callKey, ctx);
    return chain(new CallRequest(ctx, input) as unknown as UnaryRequest).then((res) => {
      if (!(res instanceof UnaryAnswer && res.ctx === ctx)) {
        copyHeaders(res.header, ctx.responseHeader);
        copyHeaders(res.trailer, ctx.responseTrailer);
      }
      return res.message;
    });
  };
}

function handlerFor(method: DescMethod, spec: MethodImplSpec, opts: AdapterOptions) {
  const { interceptors } = opts;
  const plan: MethodPlan = {
    method,
    url: `/${method.parent.typeName}/${method.name}`,
    shutdown: trackUntilShutdown(opts.shutdownSignal),
    opts,
  };
  switch (method.methodKind) {
    case "unary": {
      const invoke = unaryInvoker(spec as MethodImplSpec & { kind: "unary" }, interceptors);
      return (call: ServerUnaryCall<Buffer, Buffer>, callback: sendUnaryData<Buffer>) => {
        const ctx = contextFor(call, plan);
        answerOnce(call, ctx, method, callback, () => {
          assertWholeFrames(call);
          return invoke(ctx, decode(method.input, call.request));
        });
      };
    }
    case "server_streaming":
      return (call: ServerWritableStream<Buffer, Buffer>) => {
        const ctx = contextFor(call, plan);
        detach(
          runInCall(ctx, async () => {
            let output: AsyncIterable<unknown>;
            try {
              assertWholeFrames(call);
              const request = decode(method.input, call.request);
              output = transformInvokeImplementation(
                spec,
                ctx.snapshot(),
                interceptors,
              )(createAsyncIterable([request]));
            } catch (err) {
              call.emit("error", Object.assign(new Error("rpc failed"), toGrpcStatus(err)));
              ctx.finish();
              return;
            }
            await writeAll(call, ctx, output, method.output);
            ctx.finish();
          }),
          method,
        );
      };
    case "client_streaming":
      return (call: ServerReadableStream<Buffer, Buffer>, callback: sendUnaryData<Buffer>) => {
        const ctx = contextFor(call, plan);
        answerOnce(call, ctx, method, callback, () =>
          lastOf(transformInvokeImplementation(spec, ctx.snapshot(), interceptors)(decodeStream(method.input, call))),
        );
      };
    case "bidi_streaming":
      return (call: ServerDuplexStream<Buffer, Buffer>) => {
        const ctx = contextFor(call, plan);
        detach(
          runInCall(ctx, () =>
            writeAll(
              call,
              ctx,
              transformInvokeImplementation(spec, ctx.snapshot(), interceptors)(decodeStream(method.input, call)),
              method.output,
            ).finally(() => ctx.finish()),
          ),
          method,
        );
      };
  }
}
