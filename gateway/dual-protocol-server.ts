import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { Duplex } from "node:stream";

type Handler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/** A duplex over a socket that first yields bytes already read from it. */
class ReplayingSocket extends Duplex {
  constructor(
    private readonly socket: net.Socket,
    head: Buffer,
  ) {
    super();
    this.push(head);
    socket.on("data", (d) => {
      if (!this.push(d)) socket.pause();
    });
    socket.on("end", () => this.push(null));
    socket.on("error", (e) => this.destroy(e));
    socket.on("close", () => this.destroy());
  }
  get remoteAddress() {
    return this.socket.remoteAddress;
  }
  get remotePort() {
    return this.socket.remotePort;
  }
  get remoteFamily() {
    return this.socket.remoteFamily;
  }
  get localAddress() {
    return this.socket.localAddress;
  }
  get localPort() {
    return this.socket.localPort;
  }
  setNoDelay(v?: boolean) {
    this.socket.setNoDelay(v);
    return this;
  }
  setKeepAlive(enable?: boolean, delay?: number) {
    this.socket.setKeepAlive(enable, delay);
    return this;
  }
  setTimeout(ms: number, cb?: () => void) {
    this.socket.setTimeout(ms, cb);
    return this;
  }
  override _read() {
    this.socket.resume();
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void) {
    this.socket.write(chunk, cb);
  }
  override _final(cb: () => void) {
    this.socket.end();
    cb();
  }
  override _destroy(err: Error | null, cb: (err: Error | null) => void) {
    this.socket.destroy(err ?? undefined);
    cb(err);
  }
}

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/**
 * One port for both HTTP/1.1 (browsers: Connect, gRPC-web) and cleartext HTTP/2 with prior
 * knowledge (gRPC from devices, grpcurl, buf curl). The first bytes of a connection decide:
 * only HTTP/2 starts with its connection preface.
 */
export function createDualProtocolServer(handler: Handler, opts: { maxHeaderBytes?: number } = {}) {
  // Requests in flight per HTTP/1.1 socket: on shutdown, a keep-alive socket with none is
  // closed at once instead of holding the process for the whole grace period.
  const inflight = new Map<net.Socket, number>();
  const h1 = http.createServer({ maxHeaderSize: opts.maxHeaderBytes ?? 16 * 1024 }, (req, res) => {
    const socket = req.socket;
    inflight.set(socket, (inflight.get(socket) ?? 0) + 1);
    res.once("close", () => inflight.set(socket, (inflight.get(socket) ?? 1) - 1));
    (handler as http.RequestListener)(req, res);
  });
  const h2 = http2.createServer(
    { maxSessionMemory: 64 },
    handler as (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void,
  );
  h1.keepAliveTimeout = 65_000;
  const sockets = new Set<net.Socket>();
  const sessions = new Set<http2.ServerHttp2Session>();
  h2.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });

  const tcp = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => {
      sockets.delete(socket);
      inflight.delete(socket);
    });
    socket.on("error", () => socket.destroy());
    let seen = Buffer.alloc(0);
    const decide = (chunk: Buffer) => {
      seen = Buffer.concat([seen, chunk]);
      const n = Math.min(seen.length, PREFACE.length);
      const looksH2 = seen.subarray(0, n).equals(PREFACE.subarray(0, n));
      if (looksH2 && seen.length < PREFACE.length) return; // wait for the rest of the preface
      socket.off("data", decide);
      if (looksH2) {
        // node:http2 reads straight from the socket's handle, so bytes already read cannot be
        // unshifted back; it gets a stream that replays them first. HTTP/1.1 accepts unshift.
        // node:http2 turns Nagle off on the sockets it accepts itself, but not on a stream it is
        // handed: left on, every flow-control round trip waits out the peer's delayed ACK and an
        // upload crawls at about 1 MB/s.
        socket.setNoDelay(true);
        h2.emit("connection", new ReplayingSocket(socket, seen));
      } else {
        socket.pause();
        socket.unshift(seen);
        h1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", decide);
  });

  return {
    listen(port: number, host: string): Promise<number> {
      return new Promise((resolve, reject) => {
        tcp.once("error", reject);
        tcp.listen(port, host, () => resolve((tcp.address() as net.AddressInfo).port));
      });
    },
    /** Stop accepting, let HTTP/2 sessions finish their streams (GOAWAY), close idle keep-alives. */
    async close(graceMs: number): Promise<void> {
      tcp.close();
      for (const s of sessions) s.close();
      const deadline = Date.now() + graceMs;
      while (sockets.size > 0 && Date.now() < deadline) {
        // Keep-alive connections that finish their last request while we wait are idle now.
        for (const [socket, n] of inflight) if (n <= 0) socket.destroy();
        await new Promise((r) => setTimeout(r, 50));
      }
      for (const s of sockets) s.destroy();
      h1.close();
      h2.close();
    },
  };
}
