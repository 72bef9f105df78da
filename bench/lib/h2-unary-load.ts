/**
 * A closed-loop gRPC unary load generator on bare node:http2, for servers whose cost per call is
 * below what a grpc-js or Connect client spends making one: a generator sharing the cores and
 * costing more per call than the server sets the rate itself, and a comparison between two
 * servers of different cost comes out squeezed toward 1.
 *
 * Each call sends a request frame made before the run (5-byte gRPC prefix + message bytes) and
 * counts as successful only with HTTP 200, a response message, and grpc-status 0 (in the trailers,
 * or in the headers of a trailers-only answer); anything else counts as a failure by its status.
 *
 * The load runs in forked processes (`processes`), each with its own connections, so the generator
 * is not one event loop that saturates first. Every call slot (`inFlight` in all) cycles through
 * its own share of the frames: slot k sends frames k, k + inFlight, k + 2·inFlight... With at least
 * as many frames as slots, two calls in flight never carry the same frame, so a server that merges
 * concurrent identical requests (single-flight on a key) never gets to.
 */
import { fork } from "node:child_process";
import http2 from "node:http2";
import { fileURLToPath } from "node:url";

export interface UnaryLoadOptions {
  /** http://host:port of the gRPC server. */
  origin: string;
  /** /package.Service/Method */
  path: string;
  headers: Record<string, string>;
  /** Request messages, already encoded (protobuf binary, without the 5-byte prefix). */
  messages: Uint8Array[];
  processes: number;
  connectionsPerProcess: number;
  /** Calls kept in flight over all processes. */
  inFlight: number;
  warmupMs: number;
  durationMs: number;
}

export interface UnaryLoadResult {
  /** Successful calls that completed inside the measured window. */
  ok: number;
  /** Failed calls inside the window, by grpc-status (or "http <status>", "no message", transport error). */
  errors: Record<string, number>;
  /** Latencies of the successful calls in the window, milliseconds, sorted ascending. */
  latenciesMs: Float64Array;
  windowSeconds: number;
  /** Every call that completed, warm-up and drain included: divide the server's CPU by this. */
  completed: number;
  /** CPU the generator's processes spent, seconds (user + system), over the whole run. */
  generatorCpuSeconds: number;
}

interface ChildInput {
  origin: string;
  path: string;
  headers: Record<string, string>;
  /** This process's slots: each a list of framed requests (hex) it cycles through. */
  slots: string[][];
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

function frame(message: Uint8Array): Buffer {
  const out = Buffer.alloc(5 + message.length);
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

export async function unaryLoad(opts: UnaryLoadOptions): Promise<UnaryLoadResult> {
  const frames = opts.messages.map((m) => frame(m).toString("hex"));
  const slots: string[][] = Array.from({ length: opts.inFlight }, () => []);
  // Slot k gets frames k, k + inFlight, ...; with fewer frames than slots, slots share them.
  for (let i = 0; i < Math.max(frames.length, opts.inFlight); i++)
    slots[i % opts.inFlight]!.push(frames[i % frames.length]!);
  const outputs = await Promise.all(
    Array.from({ length: opts.processes }, (_, p) => {
      const mine = slots.filter((_, k) => k % opts.processes === p);
      const input: ChildInput = {
        origin: opts.origin,
        path: opts.path,
        headers: opts.headers,
        slots: mine,
        connections: opts.connectionsPerProcess,
        warmupMs: opts.warmupMs,
        durationMs: opts.durationMs,
      };
      return runChild(input);
    }),
  );
  const errors: Record<string, number> = {};
  for (const o of outputs) for (const [k, n] of Object.entries(o.errors)) errors[k] = (errors[k] ?? 0) + n;
  const latencies = Float64Array.from(outputs.flatMap((o) => o.latenciesMs)).sort();
  return {
    ok: outputs.reduce((a, o) => a + o.ok, 0),
    errors,
    latenciesMs: latencies,
    windowSeconds: opts.durationMs / 1000,
    completed: outputs.reduce((a, o) => a + o.completed, 0),
    generatorCpuSeconds: outputs.reduce((a, o) => a + o.cpuSeconds, 0),
  };
}

function runChild(input: ChildInput): Promise<ChildOutput> {
  const child = fork(fileURLToPath(import.meta.url), ["--unary-load-child"], {
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  return new Promise((resolve, reject) => {
    child.once("message", (m: ChildOutput) => {
      resolve(m);
      child.disconnect();
    });
    child.once("exit", (code, signal) => reject(new Error(`load process exited (${signal ?? `code ${code}`})`)));
    child.send(input);
  });
}

/** The child: one process's share of the slots over its own connections. */
async function childMain(input: ChildInput): Promise<ChildOutput> {
  const cpu0 = process.cpuUsage();
  const sessions = Array.from({ length: input.connections }, () => http2.connect(input.origin));
  await Promise.all(
    sessions.map(
      (s) => new Promise<void>((resolve, reject) => s.once("connect", () => resolve()).once("error", reject)),
    ),
  );
  const headers = {
    ":method": "POST",
    ":path": input.path,
    "content-type": "application/grpc",
    te: "trailers",
    ...input.headers,
  };
  const start = performance.now();
  const windowStart = start + input.warmupMs;
  const windowEnd = windowStart + input.durationMs;
  let latencies = new Float64Array(1 << 16);
  let ok = 0;
  let completed = 0;
  const errors: Record<string, number> = {};

  /** One call; resolves with undefined on success, else the failure's name. */
  const call = (session: http2.ClientHttp2Session, body: Buffer) =>
    new Promise<string | undefined>((resolve) => {
      const stream = session.request(headers, { endStream: false });
      let status = "";
      let grpcStatus: string | undefined;
      let bytes = 0;
      stream.on("response", (h) => {
        status = String(h[":status"]);
        if (h["grpc-status"] !== undefined) grpcStatus = String(h["grpc-status"]);
      });
      stream.on("trailers", (t) => {
        if (t["grpc-status"] !== undefined) grpcStatus = String(t["grpc-status"]);
      });
      stream.on("data", (chunk: Buffer) => (bytes += chunk.length));
      stream.on("error", (err) => resolve(err.name || "transport error"));
      stream.on("close", () => {
        if (status !== "200") resolve(`http ${status || "none"}`);
        else if (grpcStatus !== "0") resolve(`grpc-status ${grpcStatus ?? "missing"}`);
        else if (bytes < 5) resolve("no message");
        else resolve(undefined);
      });
      stream.end(body);
    });

  async function slot(index: number, frames: Buffer[]) {
    const session = sessions[index % sessions.length]!;
    let next = 0;
    while (performance.now() < windowEnd) {
      const t0 = performance.now();
      const failure = await call(session, frames[next]!);
      next = (next + 1) % frames.length;
      const t1 = performance.now();
      completed++;
      if (t1 < windowStart || t1 > windowEnd) continue;
      if (failure) {
        errors[failure] = (errors[failure] ?? 0) + 1;
        continue;
      }
      if (ok === latencies.length) {
        const grown = new Float64Array(latencies.length * 2);
        grown.set(latencies);
        latencies = grown;
      }
      latencies[ok++] = t1 - t0;
    }
  }

  await Promise.all(
    input.slots.map((frames, k) =>
      slot(
        k,
        frames.map((hex) => Buffer.from(hex, "hex")),
      ),
    ),
  );
  for (const s of sessions) s.close();
  const cpu = process.cpuUsage(cpu0);
  return {
    ok,
    errors,
    latenciesMs: Array.from(latencies.subarray(0, ok)),
    completed,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
  };
}

if (process.argv.includes("--unary-load-child")) {
  process.once("message", (input: ChildInput) => {
    childMain(input).then(
      (out) => process.send!(out),
      (err: Error) => {
        console.error(err);
        process.exit(1);
      },
    );
  });
}
