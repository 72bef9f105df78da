/**
 * A closed-loop gRPC unary load generator that writes HTTP/2 frames itself on a TCP socket, for
 * servers whose cost per call is near what any full client spends making one. On these 2 cores a
 * grpc-js or Connect client, node:http2 (a stream object and its events per call: about 100 µs)
 * and even h2load (one process per request body: about 70 µs with its wake-ups and log) each cost
 * about as much per call as a cached read costs the server, so they set the rate themselves and
 * squeeze a comparison between a cheap and a dear server toward 1.
 *
 * Here a call is two frames made before the run (HEADERS with a literal HPACK block, DATA with the
 * 5-byte gRPC prefix and the message), with only the stream id written in, and every frame that
 * comes back is read by its 9-byte header. The answers are not HPACK-decoded: a call counts as
 * successful when its stream brings response headers, DATA of exactly the length the same request
 * answered with in a probe made beforehand (over node:http2, grpc-status 0 checked) and trailers
 * ending the stream. A gRPC error is a trailers-only answer without DATA, so it cannot pass; a
 * reset stream or a GOAWAY counts as a failure too.
 *
 * It runs in its own forked process so its CPU is its own (reported per call). Each call slot
 * (`inFlight` in all) has its own request (one device, say); with as many distinct requests as
 * slots, two calls in flight never carry the same request, so a server that merges concurrent
 * identical requests (single-flight on a key) never gets to.
 */
import net from "node:net";
import { FLAG, FRAME, grpcHeaderBlock } from "./h2-wire.js";
import { inOwnProcess, serveInOwnProcess } from "./own-process.js";

export interface FramesLoadOptions {
  /** http://host:port of the gRPC server (h2c). */
  origin: string;
  /**
   * Replicas of that server to spread the connections over, round robin (connection c to
   * `origins[c % n]`); unset: all to `origin`. The :authority every call carries is `origin`'s.
   */
  origins?: string[];
  /** /package.Service/Method */
  path: string;
  /** Request headers besides the gRPC ones, e.g. authorization; lower-case names. */
  headers: Record<string, string>;
  /** One encoded request message (protobuf binary, no prefix) per call slot, and the DATA length of its successful answer. */
  requests: { message: Uint8Array; okDataBytes: number }[];
  connections: number;
  warmupMs: number;
  durationMs: number;
}

export interface FramesLoadResult {
  /** Successful calls that completed inside the measured window. */
  ok: number;
  /** Failed calls inside the window, by kind. */
  errors: Record<string, number>;
  /** Latencies of the successful calls in the window, milliseconds, ascending. */
  latenciesMs: Float64Array;
  windowSeconds: number;
  /** Every call that completed, warm-up included: divide the server's CPU by this. */
  completed: number;
  /** CPU the generator's process spent over the whole run, seconds (user + system). */
  generatorCpuSeconds: number;
}

interface ChildInput {
  targets: { host: string; port: number }[];
  headerBlock: string;
  requests: { frame: string; okDataBytes: number }[];
  connections: number;
  warmupMs: number;
  durationMs: number;
}

interface ChildOutput {
  ok: number;
  errors: Record<string, number>;
  latenciesMs: number[];
  completed: number;
  cpuSeconds: number;
}

function frameHeader(length: number, type: number, flags: number, streamId: number): Buffer {
  const b = Buffer.alloc(9);
  b.writeUIntBE(length, 0, 3);
  b[3] = type;
  b[4] = flags;
  b.writeUInt32BE(streamId, 5);
  return b;
}

export async function framesLoad(opts: FramesLoadOptions): Promise<FramesLoadResult> {
  const url = new URL(opts.origin);
  const input: ChildInput = {
    targets: (opts.origins ?? [opts.origin]).map((o) => {
      const u = new URL(o);
      return { host: u.hostname, port: Number(u.port) };
    }),
    headerBlock: grpcHeaderBlock(url.host, opts.path, opts.headers).toString("hex"),
    requests: opts.requests.map((r) => {
      const frame = Buffer.alloc(5 + r.message.length);
      frame.writeUInt32BE(r.message.length, 1);
      frame.set(r.message, 5);
      return { frame: frame.toString("hex"), okDataBytes: r.okDataBytes };
    }),
    connections: opts.connections,
    warmupMs: opts.warmupMs,
    durationMs: opts.durationMs,
  };
  const out = await inOwnProcess<ChildInput, ChildOutput>(import.meta.url, "--frames-load-child", input);
  return {
    ok: out.ok,
    errors: out.errors,
    latenciesMs: Float64Array.from(out.latenciesMs).sort(),
    windowSeconds: opts.durationMs / 1000,
    completed: out.completed,
    generatorCpuSeconds: out.cpuSeconds,
  };
}

interface Call {
  slot: number;
  started: number;
  headerFrames: number;
  dataBytes: number;
}

async function childMain(input: ChildInput): Promise<ChildOutput> {
  const cpu0 = process.cpuUsage();
  const block = Buffer.from(input.headerBlock, "hex");
  // Per slot, its HEADERS + DATA frames in one buffer; only the two stream ids change per call.
  const templates = input.requests.map((r) => {
    const frame = Buffer.from(r.frame, "hex");
    return Buffer.concat([
      frameHeader(block.length, FRAME.HEADERS, FLAG.END_HEADERS, 0),
      block,
      frameHeader(frame.length, FRAME.DATA, FLAG.END_STREAM, 0),
      frame,
    ]);
  });
  const dataIdOffset = 9 + block.length + 5;
  const start = performance.now();
  const windowStart = start + input.warmupMs;
  const windowEnd = windowStart + input.durationMs;
  let latencies = new Float64Array(1 << 16);
  let ok = 0;
  let completed = 0;
  const errors: Record<string, number> = {};
  const fail = (kind: string, at: number) => {
    if (at >= windowStart && at <= windowEnd) errors[kind] = (errors[kind] ?? 0) + 1;
  };

  const connection = (slots: number[], target: { host: string; port: number }) =>
    new Promise<void>((resolve, reject) => {
      const socket = net.connect(target.port, target.host);
      socket.setNoDelay(true);
      const calls = new Map<number, Call>();
      let nextStreamId = 1;
      let sendWindow = 65_535;
      let waiting: number[] = [];
      let pending: Buffer | undefined;
      let finished = false;
      // No new calls: the server went away or did not answer in time.
      let stopped = false;
      let out: Buffer[] = [];
      const guard = setTimeout(
        () => {
          stopped = true;
          for (const [cid, call] of calls) done(cid, call, "no answer 15 s after the window");
          finish();
          socket.destroy();
        },
        windowEnd - start + 15_000,
      );

      const send = (slot: number) => {
        const t = templates[slot]!;
        const dataLength = t.length - dataIdOffset - 4;
        if (sendWindow < dataLength) {
          waiting.push(slot);
          return;
        }
        sendWindow -= dataLength;
        const id = nextStreamId;
        nextStreamId += 2;
        t.writeUInt32BE(id, 5);
        t.writeUInt32BE(id, dataIdOffset);
        out.push(Buffer.from(t));
        calls.set(id, { slot, started: performance.now(), headerFrames: 0, dataBytes: 0 });
      };
      const flush = () => {
        if (out.length === 0) return;
        socket.write(out.length === 1 ? out[0]! : Buffer.concat(out));
        out = [];
      };
      const done = (id: number, call: Call, failure: string | undefined) => {
        calls.delete(id);
        const now = performance.now();
        completed++;
        if (failure) fail(failure, now);
        else if (now >= windowStart && now <= windowEnd) {
          if (ok === latencies.length) {
            const grown = new Float64Array(latencies.length * 2);
            grown.set(latencies);
            latencies = grown;
          }
          latencies[ok++] = now - call.started;
        }
        if (now < windowEnd && !stopped) send(call.slot);
        else if (calls.size === 0) finish();
      };
      const finish = () => {
        if (finished) return;
        finished = true;
        clearTimeout(guard);
        socket.end();
        resolve();
      };

      const onFrame = (type: number, flags: number, id: number, payload: Buffer) => {
        switch (type) {
          case FRAME.SETTINGS:
            if (!(flags & FLAG.ACK)) out.push(frameHeader(0, FRAME.SETTINGS, FLAG.ACK, 0));
            return;
          case FRAME.PING:
            if (!(flags & FLAG.ACK)) out.push(frameHeader(8, FRAME.PING, FLAG.ACK, 0), payload);
            return;
          case FRAME.WINDOW_UPDATE:
            if (id === 0) {
              sendWindow += payload.readUInt32BE(0) & 0x7fffffff;
              const retry = waiting;
              waiting = [];
              for (const slot of retry) send(slot);
            }
            return;
          case FRAME.GOAWAY:
            stopped = true;
            for (const [cid, call] of calls) done(cid, call, "goaway");
            finish();
            return;
        }
        const call = calls.get(id);
        if (!call) return;
        if (type === FRAME.RST_STREAM) return done(id, call, "stream reset");
        if (type === FRAME.DATA) call.dataBytes += payload.length - (flags & FLAG.PADDED ? payload[0]! + 1 : 0);
        if (type === FRAME.HEADERS) call.headerFrames++;
        if (!(flags & FLAG.END_STREAM)) return;
        const okDataBytes = input.requests[call.slot]!.okDataBytes;
        if (type !== FRAME.HEADERS || call.headerFrames !== 2)
          done(id, call, "no trailers after a message (grpc error)");
        else if (call.dataBytes !== okDataBytes)
          done(id, call, `answer of ${call.dataBytes} bytes, not ${okDataBytes}`);
        else done(id, call, undefined);
      };

      socket.on("data", (chunk: Buffer) => {
        const buf = pending ? Buffer.concat([pending, chunk]) : chunk;
        let at = 0;
        while (buf.length - at >= 9) {
          const length = buf.readUIntBE(at, 3);
          if (buf.length - at < 9 + length) break;
          onFrame(
            buf[at + 3]!,
            buf[at + 4]!,
            buf.readUInt32BE(at + 5) & 0x7fffffff,
            buf.subarray(at + 9, at + 9 + length),
          );
          at += 9 + length;
        }
        pending = at < buf.length ? Buffer.from(buf.subarray(at)) : undefined;
        flush();
      });
      socket.on("error", (err) => (finished ? undefined : reject(err)));
      socket.on("close", () => {
        stopped = true;
        for (const [cid, call] of calls) done(cid, call, "connection closed");
        finish();
      });
      socket.once("connect", () => {
        // Preface, our settings (no push), and room for answers without window updates from us.
        out.push(
          Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1"),
          frameHeader(6, FRAME.SETTINGS, 0, 0),
          Buffer.from([0, 2, 0, 0, 0, 0]),
          frameHeader(4, FRAME.WINDOW_UPDATE, 0, 0),
          Buffer.from([0x7f, 0xff, 0x00, 0x00]),
        );
        for (const slot of slots) send(slot);
        flush();
      });
    });

  const bySocket = Array.from({ length: input.connections }, (_, c) =>
    input.requests.map((_, slot) => slot).filter((slot) => slot % input.connections === c),
  );
  await Promise.all(
    bySocket
      .map((slots, c) => ({ slots, target: input.targets[c % input.targets.length]! }))
      .filter((s) => s.slots.length > 0)
      .map((s) => connection(s.slots, s.target)),
  );
  const cpu = process.cpuUsage(cpu0);
  return {
    ok,
    errors,
    latenciesMs: Array.from(latencies.subarray(0, ok)),
    completed,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
  };
}

serveInOwnProcess("--frames-load-child", childMain);
