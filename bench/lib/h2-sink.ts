/**
 * A bare node:http2 server that takes a POST body and either drops it (/discard) or writes it to
 * a file and fsyncs it (/file), the references bench/upload.ts puts beside the gRPC paths. The
 * same handler listens twice: on a plain http2.createServer, and behind the gateway's own
 * listener (gateway/dual-protocol-server.ts), so the listener can be measured on its own.
 *
 * It runs as its own process (forked by startSink) rather than inside the bench: the mesh paths
 * have a client process and a server process on separate cores, and a sink sharing the client's
 * event loop would be capped at one core and read as a ceiling that is not one.
 */
import { fork, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import fs from "node:fs/promises";
import http2 from "node:http2";
import path from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import { createDualProtocolServer } from "../../gateway/dual-protocol-server.js";

export interface SinkReply {
  bytes: number;
  /** Hex SHA-256 of the body; only /file computes it, as the blob store does while it writes. */
  sha256?: string;
}

export interface Sink {
  origin: string;
  /** The same sink behind gateway/dual-protocol-server.ts, the gateway's listener. */
  dualOrigin: string;
  pid: number;
  stop(): Promise<void>;
}

/** Forks the sink; `fileDir` is where /file writes (the bench's temp dir, the same disk as the mesh's blobs). */
export async function startSink(fileDir: string): Promise<Sink> {
  const child: ChildProcess = fork(fileURLToPath(import.meta.url), [fileDir], {
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "ignore", "inherit", "ipc"],
  });
  const { port, dualPort } = await new Promise<{ port: number; dualPort: number }>((resolve, reject) => {
    child.once("message", (m: { port?: number; dualPort?: number }) =>
      m.port && m.dualPort
        ? resolve({ port: m.port, dualPort: m.dualPort })
        : reject(new Error(`sink said ${JSON.stringify(m)}`)),
    );
    child.once("exit", (code, signal) => reject(new Error(`sink exited during start (${signal ?? `code ${code}`})`)));
  });
  return {
    origin: `http://127.0.0.1:${port}`,
    dualOrigin: `http://127.0.0.1:${dualPort}`,
    pid: child.pid!,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise<void>((r) => child.once("exit", () => r()));
      child.kill("SIGTERM");
      await gone;
    },
  };
}

const WRITE_BYTES = 1024 * 1024;

function serve(fileDir: string) {
  let seq = 0;
  // The compatibility (req, res) API, as connect-node's adapter in the gateway uses it.
  const handler = (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => {
    const reply = (status: number, body: SinkReply | { error: string }) => {
      if (res.closed || res.destroyed) return;
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    req.on("error", () => undefined);
    if (req.url === "/discard") {
      let bytes = 0;
      req.on("data", (d: Buffer) => (bytes += d.length));
      req.on("end", () => reply(200, { bytes }));
      return;
    }
    if (req.url === "/file") {
      void (async () => {
        const file = path.join(fileDir, `sink-${process.pid}-${seq++}.part`);
        try {
          const hash = createHash("sha256");
          let bytes = 0;
          // HTTP/2 hands the body over in frame-sized pieces (16 KiB); written one by one they
          // would measure syscalls, not the disk. Gathered into 1 MiB writes they match what the
          // blob store does with 1 MiB chunks.
          let held: Buffer[] = [];
          let heldBytes = 0;
          const tap = new Transform({
            transform(chunk: Buffer, _enc, cb) {
              hash.update(chunk);
              bytes += chunk.length;
              held.push(chunk);
              heldBytes += chunk.length;
              if (heldBytes < WRITE_BYTES) return cb();
              const out = Buffer.concat(held, heldBytes);
              held = [];
              heldBytes = 0;
              cb(null, out);
            },
            flush(cb) {
              cb(null, heldBytes ? Buffer.concat(held, heldBytes) : undefined);
            },
          });
          // flush: fsync before close, and pipeline settles only after close: durable before
          // answering, like FsBlobStore with durable: true.
          await pipeline(req, tap, createWriteStream(file, { flags: "wx", flush: true }));
          reply(200, { bytes, sha256: hash.digest("hex") });
        } catch (err) {
          reply(500, { error: (err as Error).message });
        } finally {
          await fs.rm(file, { force: true });
        }
      })();
      return;
    }
    reply(404, { error: `no such path ${req.url}` });
  };

  // Node's defaults on purpose (as the gateway's HTTP/2 server uses them, bar maxSessionMemory):
  // this is what a plain Node HTTP/2 endpoint does, not a tuned one.
  const plain = http2.createServer({ maxSessionMemory: 64 }, handler);
  // The same handler behind the gateway's own listener (one port; HTTP/1.1 or HTTP/2 told apart
  // by the first bytes): what the listener costs, apart from gRPC and the forwarding.
  const dual = createDualProtocolServer(handler as Parameters<typeof createDualProtocolServer>[0]);
  plain.listen(0, "127.0.0.1", () => {
    void dual
      .listen(0, "127.0.0.1")
      .then((dualPort) => process.send!({ port: (plain.address() as { port: number }).port, dualPort }));
  });
  process.on("SIGTERM", () => {
    void dual.close(1_000);
    plain.close(() => process.exit(0));
  });
  // Never outlive the bench that forked us.
  process.on("disconnect", () => process.exit(0));
}

/**
 * POSTs `chunks` over one HTTP/2 stream of `session`, honouring backpressure, and returns the
 * sink's answer. The body is the file's bytes as they are, with no framing.
 */
export function postChunks(
  session: http2.ClientHttp2Session,
  pathname: string,
  chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
): Promise<SinkReply> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ":method": "POST", ":path": pathname, "content-type": "application/octet-stream" });
    let status = 0;
    const body: Buffer[] = [];
    req.on("response", (h) => (status = Number(h[":status"])));
    req.on("data", (d: Buffer) => body.push(d));
    req.on("error", reject);
    req.on("end", () => {
      const text = Buffer.concat(body).toString();
      if (status !== 200) reject(new Error(`sink ${pathname}: HTTP ${status} ${text.slice(0, 200)}`));
      else resolve(JSON.parse(text) as SinkReply);
    });
    void (async () => {
      try {
        for await (const c of chunks) {
          if (!req.write(c))
            await new Promise<void>((r, j) => {
              const onDrain = () => (req.off("error", onErr), r());
              const onErr = (e: Error) => (req.off("drain", onDrain), j(e));
              req.once("drain", onDrain);
              req.once("error", onErr);
            });
        }
        req.end();
      } catch (err) {
        req.destroy(err as Error);
      }
    })();
  });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url))
  serve(process.argv[2] ?? process.cwd());
