import { once } from "node:events";
import type { DescMessage, DescMethod, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { create, fromBinary, isMessage, toBinary } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextKey,
  createServiceImplSpec,
  type HandlerContext,
  type Interceptor,
  type MethodImplSpec,
  type ServiceImpl,
  type StreamRequest,
  type StreamResponse,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import { transformInvokeImplementation } from "@connectrpc/connect/protocol";
import { runInCall } from "./call-context.js";
import { coarseTimers } from "./coarse-timer.js";
import { CallContext, callFinished, CallRequest, CallValues, trackUntilShutdown } from "./handler-context.js";
import { headerRecord, statusTrailers, toConnectError } from "./errors.js";
import { encodingOf } from "./encoded.js";
import type { MethodRoute, ServerCall } from "./h2-transport.js";
import { finishingStream } from "./interceptors/stream-end.js";

/**
 * A hand-written reader of one request type, for a hot one where fromBinary is a visible share of
 * the work. It answers the message fromBinary would, or undefined when the bytes are anything but
 * the plain case (fromBinary then reads them, or refuses them with its own error).
 */
export type DecodeShortcut = (bytes: Uint8Array) => unknown;
export type DecodeShortcuts = ReadonlyMap<DescMessage, DecodeShortcut>;

export interface AdapterOptions {
  interceptors: Interceptor[];
  decodeShortcuts?: DecodeShortcuts;
  /** Unary calls without a deadline get the default; nobody gets more than the max. */
  deadlines?: { defaultUnaryMs: number; maxUnaryMs: number };
  /** Aborted when the server starts draining: streams end (with its reason) instead of holding shutdown. */
  shutdownSignal: AbortSignal;
}

/**
 * Serves a Connect-style ServiceImpl on the mesh's HTTP/2 transport (h2-transport.ts): one route
 * per method, keyed by its path. Messages are decoded here, so a malformed one becomes
 * invalid_argument with a sentence, and the same Connect interceptors run as in the gateway.
 */
export function routesOf(
  service: DescService,
  impl: Partial<ServiceImpl<DescService>>,
  opts: AdapterOptions,
): Map<string, MethodRoute> {
  const spec = createServiceImplSpec(service, impl);
  const routes = new Map<string, MethodRoute>();
  for (const method of service.methods) {
    const methodSpec = spec.methods[method.localName]!;
    routes.set(`/${service.typeName}/${method.name}`, {
      singleRequest: method.methodKind === "unary" || method.methodKind === "server_streaming",
      serve: handlerFor(method, methodSpec, opts),
    });
  }
  return routes;
}

function decode<T extends DescMessage>(schema: T, bytes: Buffer, shortcut?: DecodeShortcut): MessageShape<T> {
  const plain = shortcut?.(bytes) as MessageShape<T> | undefined;
  if (plain !== undefined) return plain;
  try {
    return fromBinary(schema, bytes);
  } catch {
    throw new ConnectError(`the request is not a valid ${schema.typeName} message`, Code.InvalidArgument);
  }
}

function encode(schema: DescMessage, message: unknown): Uint8Array {
  return encodingOf(message) ?? toBinary(schema, message as MessageShape<DescMessage>);
}

/** A streamed message's bytes: encoded by its handler already, or here (from a plain object too, as connect allows). */
function bytesOf(schema: DescMessage, message: unknown): Uint8Array {
  return (
    encodingOf(message) ??
    toBinary(schema, isMessage(message, schema) ? message : create(schema, message as MessageInitShape<DescMessage>))
  );
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

function contextFor(call: ServerCall, plan: MethodPlan): CallContext {
  const { method, opts } = plan;
  let timeoutMs = call.timeoutMs;
  // The effective deadline lives in the handler context, so handlers see it and every client
  // they call inherits it (see call-context.ts).
  const callerChose = timeoutMs !== undefined;
  if (opts.deadlines && method.methodKind === "unary") {
    timeoutMs = Math.min(timeoutMs ?? opts.deadlines.defaultUnaryMs, opts.deadlines.maxUnaryMs);
  }
  const ctx: CallContext = new CallContext(
    method,
    plan.url,
    call.headers,
    new CallValues(call, peerOf),
    timeoutMs,
    (reason) => {
      plan.shutdown.remove(ctx);
      if (reason !== callFinished) resetIfStuck(call);
    },
  );
  call.onCancel = () => ctx.cancel();
  // Shutdown lets unary calls finish within its grace; streams may run for good, so they end.
  if (method.methodKind !== "unary") plan.shutdown.add(ctx);
  // The clock starts when the call's headers arrive, not when its request has: a client that
  // sends headers and then nothing (or half a message) is held to the deadline like any other.
  ctx.arm(timeoutMs, callerChose ? undefined : defaultDeadlines);
  return ctx;
}

/** How long a call that was cut short may take to get its status to the client. */
const STATUS_GRACE_MS = 1_000;

/**
 * Resets the HTTP/2 stream of a call whose deadline passed (or that shutdown cut short) if its
 * status has not reached the client soon after. The status goes out as trailers, and trailers
 * wait behind any response bytes still queued; a client that stops reading (zero flow-control
 * window) would never get them, and the stream, its buffered messages and the client's wait
 * would outlive the deadline for as long as the connection does. RST_STREAM is not
 * flow-controlled: the client learns the call is over and the server lets go of it.
 */
function resetIfStuck(call: ServerCall): void {
  if (call.cancelled) return;
  const timer = setTimeout(() => {
    if (!call.cancelled) call.reset();
  }, STATUS_GRACE_MS);
  timer.unref();
}

async function lastOf(output: AsyncIterable<unknown>): Promise<unknown> {
  let last: unknown;
  for await (const m of output) last = m;
  return last;
}

function peerOf(call: ServerCall): string {
  return call.peer();
}

function sendHeaderOnce(call: ServerCall, ctx: CallContext): void {
  const header = ctx.responseHeaderIfAny();
  call.sendHeaders(header && headerRecord(header));
}

async function* decodeStream<T extends DescMessage>(
  schema: T,
  call: ServerCall,
  shortcut?: DecodeShortcut,
): AsyncIterable<MessageShape<T>> {
  for await (const chunk of call.messages()) yield decode(schema, chunk, shortcut);
}

async function writeAll(
  call: ServerCall,
  ctx: CallContext,
  output: AsyncIterable<unknown> | Promise<AsyncIterable<unknown>>,
  schema: DescMessage,
) {
  try {
    for await (const message of await output) {
      sendHeaderOnce(call, ctx);
      if (call.cancelled || call.done) return;
      if (!call.write(bytesOf(schema, message)))
        await once(call.stream, "drain", { signal: ctx.signal }).catch(() => undefined);
    }
    sendHeaderOnce(call, ctx);
    const trailer = ctx.responseTrailerIfAny();
    call.finish(trailer ? { ...headerRecord(trailer), "grpc-status": "0" } : undefined);
  } catch (err) {
    if (call.cancelled) return;
    call.finish(statusTrailers(err, ctx.responseTrailerIfAny()));
  }
}

/**
 * The transport does not await handlers, so the promise of every call's work is ours to settle.
 * The work answers every failure it expects itself; anything that still escapes is a bug to log,
 * not an unhandled rejection that would end the process and every other call in it.
 */
function detach(work: Promise<void>, method: DescMethod): void {
  work.catch((err: unknown) => toConnectError(err, `${method.parent.typeName}/${method.name} (adapter)`));
}

/**
 * The single answer of a unary or client-streaming call: the message, or the status, or the
 * reason the call was cut short (deadline, cancellation, shutdown) if that comes first, so a
 * handler that ignores its signal cannot hold a caller past its deadline. Whichever comes second
 * finds the call done and goes nowhere.
 *
 * `work` is a thunk so that a call whose signal has already fired (a deadline that expired in
 * transit, a 1 ms grpc-timeout) never starts it. Starting it and then answering with the abort
 * reason would leave its promise, which rejects on that same signal, with nobody to handle it:
 * an unhandled rejection, and Node ends the process.
 */
function answerOnce(call: ServerCall, ctx: CallContext, method: DescMethod, work: () => Promise<unknown>): void {
  const fail = (err: unknown) => {
    // A handler that fails after its call was cut short has nobody left to tell.
    if (call.done) return;
    call.finish(statusTrailers(err, ctx.responseTrailerIfAny()));
    ctx.finish();
  };
  if (ctx.cutShort) return fail(ConnectError.from(ctx.abortReason));
  ctx.onAbort = (reason) => fail(ConnectError.from(reason));
  let pending: Promise<unknown>;
  try {
    pending = runInCall(ctx, work);
  } catch (err) {
    return fail(err);
  }
  detach(
    pending.then((response) => {
      if (call.done) return;
      let message: Uint8Array;
      try {
        message = encode(method.output, response);
      } catch (err) {
        return fail(err);
      }
      const header = ctx.responseHeaderIfAny();
      const trailer = ctx.responseTrailerIfAny();
      call.answer(message, header && headerRecord(header), trailer && { ...headerRecord(trailer), "grpc-status": "0" });
      ctx.finish();
    }, fail),
    method,
  );
}

/**
 * Ends a streaming call's context once its stream has closed, not when its last message was
 * queued: until the status has gone out (behind messages a slow reader has not taken), the
 * deadline still applies, and a status stuck past it ends in a reset (see resetIfStuck).
 */
function finishOnClose(call: ServerCall, ctx: CallContext): void {
  const stream = call.stream;
  if (stream.closed || stream.destroyed) ctx.finish();
  else stream.once("close", () => ctx.finish());
}

/**
 * Answers a streaming call with the reason it was cut short (deadline, shutdown) as soon as that
 * happens: its handler may be waiting on the client's next message and would not notice until it
 * came. Whatever the handler does afterwards goes nowhere (the call is done).
 */
function answerWhenCutShort(call: ServerCall, ctx: CallContext): void {
  onceCutShort(ctx, (reason) => call.finish(statusTrailers(ConnectError.from(reason))));
}

/** Sets what happens when the call is cut short, at once if it already was (a deadline of 0). */
function onceCutShort(ctx: CallContext, then: (reason: unknown) => void): void {
  if (ctx.cutShort) then(ctx.abortReason);
  else ctx.onAbort = then;
}

/**
 * Waits for the one request message of a unary or server-streaming call. Should the call end
 * first (its deadline, the client leaving, shutdown), it is answered from here: a handler that
 * never started has nobody else to answer it.
 */
function whenRequestArrives(
  call: ServerCall,
  ctx: CallContext,
  plan: MethodPlan,
  run: (message: Buffer | undefined, err?: ConnectError) => void,
): void {
  onceCutShort(ctx, (reason) => {
    const callerChose = call.timeoutMs !== undefined;
    const ce = ConnectError.from(reason);
    call.finish(
      statusTrailers(
        ce.code === Code.DeadlineExceeded && !callerChose && plan.opts.deadlines
          ? new ConnectError(
              `the request did not arrive within the default deadline of ${plan.opts.deadlines.defaultUnaryMs} ms`,
              Code.DeadlineExceeded,
            )
          : ce,
      ),
    );
  });
  // A server stream has no deadline unless the client set one; its request is still bounded.
  let arrival: object | undefined;
  if (plan.method.methodKind !== "unary" && call.timeoutMs === undefined && plan.opts.deadlines)
    arrival = defaultDeadlines.set(plan.opts.deadlines.defaultUnaryMs, () =>
      ctx.abort(new ConnectError("the request did not arrive in time", Code.DeadlineExceeded)),
    );
  call.readSingle((message, err) => {
    if (arrival) defaultDeadlines.clear(arrival);
    if (ctx.cutShort) return;
    ctx.onAbort = undefined;
    run(message, err);
  });
}

/**
 * A response whose headers are the call's own, made only when someone reads them (connect's
 * invokers read both on every call): a unary call's message, or a server stream's messages.
 */
class CallAnswer<M> {
  constructor(
    readonly ctx: CallContext,
    readonly message: M,
    readonly method: DescMethod,
    readonly stream: boolean,
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

const callKey = createContextKey<CallContext | undefined>(undefined, { description: "medmesh server call" });

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
    new CallAnswer(ctx, create(method.output, out as never), method, false) as unknown as UnaryResponse;
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
      if (!(res instanceof CallAnswer && res.ctx === ctx)) {
        copyHeaders(res.header, ctx.responseHeader);
        copyHeaders(res.trailer, ctx.responseTrailer);
      }
      return res.message;
    });
  };
}

/**
 * A server stream's request as the interceptors see it: an iterable of its one message that lets
 * go of the message once read (interceptors may keep the request for the end of the call).
 */
class OneMessage implements AsyncIterable<unknown> {
  constructor(private value: unknown) {}
  async *[Symbol.asyncIterator](): AsyncGenerator<unknown> {
    const value = this.value;
    this.value = undefined;
    yield value;
  }
}

/** The one request message of a server stream, as an interceptor may have wrapped it. */
async function onlyMessage(input: AsyncIterable<unknown>): Promise<unknown> {
  const it = input[Symbol.asyncIterator]();
  const first = await it.next();
  if (first.done) throw new ConnectError("the request ended without a message", Code.Unimplemented);
  const second = await it.next();
  if (!second.done)
    throw new ConnectError("a server-streaming request carries exactly one message", Code.Unimplemented);
  return first.value;
}

/**
 * Connect's server-streaming invoker, with the interceptor chain built once per method and no
 * copy of the context: a Subscribe stream can stay open for hours, and every object the invoker
 * leaves reachable is kept that long, once per subscriber. The response stream is one
 * `finishingStream` that every interceptor adds its end-of-call hooks to.
 */
function serverStreamInvoker(spec: MethodImplSpec & { kind: "server_streaming" }, interceptors: Interceptor[]) {
  const { method } = spec;
  const terminal = async (req: StreamRequest): Promise<StreamResponse> => {
    const ctx = req instanceof CallRequest ? req.ctx : req.contextValues.get(callKey)!;
    const input = await onlyMessage(req.message);
    const output = spec.impl(input as never, handlerContextFor(ctx, req as unknown as UnaryRequest));
    return new CallAnswer(ctx, finishingStream(output), method, true) as unknown as StreamResponse;
  };
  let chain: (req: StreamRequest) => Promise<StreamResponse> = terminal;
  for (let i = interceptors.length - 1; i >= 0; i--) chain = interceptors[i]!(chain as never) as typeof chain;
  return async (ctx: CallContext, input: unknown): Promise<AsyncIterable<unknown>> => {
    ctx.values.set(callKey, ctx);
    const res = await chain(new CallRequest(ctx, new OneMessage(input)) as unknown as StreamRequest);
    if (res instanceof CallAnswer && res.ctx === ctx) return res.message as AsyncIterable<unknown>;
    // An interceptor answered with headers of its own: they become the call's, trailers at the end.
    copyHeaders(res.header, ctx.responseHeader);
    return withTrailersOf(res, ctx);
  };
}

async function* withTrailersOf(res: StreamResponse, ctx: CallContext): AsyncIterable<unknown> {
  yield* res.message;
  copyHeaders(res.trailer, ctx.responseTrailer);
}

function handlerFor(method: DescMethod, spec: MethodImplSpec, opts: AdapterOptions): (call: ServerCall) => void {
  const { interceptors } = opts;
  const shortcut = opts.decodeShortcuts?.get(method.input);
  const plan: MethodPlan = {
    method,
    url: `/${method.parent.typeName}/${method.name}`,
    shutdown: trackUntilShutdown(opts.shutdownSignal),
    opts,
  };
  switch (method.methodKind) {
    case "unary": {
      const invoke = unaryInvoker(spec as MethodImplSpec & { kind: "unary" }, interceptors);
      return (call) => {
        const ctx = contextFor(call, plan);
        whenRequestArrives(call, ctx, plan, (message, err) =>
          answerOnce(call, ctx, method, () =>
            err ? Promise.reject(err) : invoke(ctx, decode(method.input, message!, shortcut)),
          ),
        );
      };
    }
    case "server_streaming": {
      const invoke = serverStreamInvoker(spec as MethodImplSpec & { kind: "server_streaming" }, interceptors);
      return (call) => {
        const ctx = contextFor(call, plan);
        whenRequestArrives(call, ctx, plan, (message, err) =>
          detach(
            runInCall(ctx, async () => {
              answerWhenCutShort(call, ctx);
              let output: Promise<AsyncIterable<unknown>>;
              try {
                if (err) throw err;
                output = invoke(ctx, decode(method.input, message!, shortcut));
              } catch (e) {
                call.finish(statusTrailers(e));
                ctx.finish();
                return;
              }
              await writeAll(call, ctx, output, method.output);
              finishOnClose(call, ctx);
            }),
            method,
          ),
        );
      };
    }
    case "client_streaming":
      return (call) => {
        const ctx = contextFor(call, plan);
        answerOnce(call, ctx, method, () =>
          lastOf(
            transformInvokeImplementation(
              spec,
              ctx.snapshot(),
              interceptors,
            )(decodeStream(method.input, call, shortcut)),
          ),
        );
      };
    case "bidi_streaming":
      return (call) => {
        const ctx = contextFor(call, plan);
        answerWhenCutShort(call, ctx);
        detach(
          runInCall(ctx, () =>
            writeAll(
              call,
              ctx,
              transformInvokeImplementation(
                spec,
                ctx.snapshot(),
                interceptors,
              )(decodeStream(method.input, call, shortcut)),
              method.output,
            ).finally(() => finishOnClose(call, ctx)),
          ),
          method,
        );
      };
  }
}
