import http from "node:http";
import http2 from "node:http2";
import net from "node:net";

type Handler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/**
 * Offered every HTTP/2 stream before the handler: true when it took the stream itself, which then
 * gets no request/response pair. Building that pair costs more than a small call's own work.
 */
export type StreamTaker = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => boolean;

const STREAM_WINDOW_BYTES = 2 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES = 8 * 1024 * 1024;

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** What one client may hold of the gateway, per connection. */
export interface ConnectionLimits {
  /** Largest request header block: HTTP/1.1 answers 431 beyond it, HTTP/2 resets the stream. */
  maxHeaderBytes: number;
  /**
   * How long a new connection has to say which protocol it speaks (the first bytes, or the whole
   * HTTP/2 preface), and an HTTP/1.1 request to deliver its headers.
   */
  headersTimeoutMs: number;
  /**
   * How long a request may take to arrive. HTTP/1.1: headers and body together (node's
   * requestTimeout). HTTP/2: a request body that stops flowing for this long is cut. Neither
   * bounds a response: a WatchDocument stream lives as long as it is wanted.
   */
  requestTimeoutMs: number;
  /** A connection with no request in flight and no traffic is closed after this long. */
  idleTimeoutMs: number;
  /** SETTINGS_MAX_CONCURRENT_STREAMS: streams beyond it are refused (REFUSED_STREAM). */
  maxStreamsPerConnection: number;
}

export const defaultLimits: ConnectionLimits = {
  maxHeaderBytes: 16 * 1024,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 120_000,
  idleTimeoutMs: 65_000,
  maxStreamsPerConnection: 100,
};

/**
 * One port for both HTTP/1.1 (browsers: Connect, gRPC-web) and cleartext HTTP/2 with prior
 * knowledge (gRPC from devices, grpcurl, buf curl). The first bytes of a connection decide:
 * only HTTP/2 starts with its connection preface.
 *
 * Every stage is bounded, so a slow or hostile client holds a connection only so long: the
 * sniffing of the first bytes, HTTP/1.1 headers and bodies, HTTP/2 request bodies, idle
 * connections of either kind, and streams per HTTP/2 connection.
 */
export function createDualProtocolServer(
  handler: Handler,
  limits: Partial<ConnectionLimits> = {},
  takeStream?: StreamTaker,
) {
  const lim = { ...defaultLimits, ...limits };
  // Requests in flight per HTTP/1.1 socket: on shutdown, a keep-alive socket with none is
  // closed at once instead of holding the process for the whole grace period.
  const inflight = new Map<net.Socket, number>();
  const h1 = http.createServer(
    {
      maxHeaderSize: lim.maxHeaderBytes,
      // node refuses a headers timeout longer than the request timeout.
      headersTimeout: Math.min(lim.headersTimeoutMs, lim.requestTimeoutMs),
      requestTimeout: lim.requestTimeoutMs,
      // node looks for overdue requests on this period (30 s by default); a timeout can only be
      // kept to within it.
      connectionsCheckingInterval: Math.max(
        25,
        Math.min(1_000, Math.floor(Math.min(lim.headersTimeoutMs, lim.requestTimeoutMs) / 4)),
      ),
    },
    (req, res) => {
      const socket = req.socket;
      inflight.set(socket, (inflight.get(socket) ?? 0) + 1);
      res.once("close", () => inflight.set(socket, (inflight.get(socket) ?? 1) - 1));
      (handler as http.RequestListener)(req, res);
    },
  );
  h1.keepAliveTimeout = lim.idleTimeoutMs;
  // node starts checking header and request timeouts when a server starts listening, and this
  // one never listens: connections are handed to it. Without this, neither timeout ever fired.
  h1.emit("listening");
  const h2 = http2.createServer(
    {
      maxSessionMemory: 64,
      settings: {
        maxConcurrentStreams: lim.maxStreamsPerConnection,
        maxHeaderListSize: lim.maxHeaderBytes,
        // With the default 64 KiB an upload waits a round trip for WINDOW_UPDATE every 64 KiB.
        initialWindowSize: STREAM_WINDOW_BYTES,
      },
      maxHeaderListPairs: 128,
      // A client that keeps opening streams it is refused, or sends frames that make no sense,
      // is not a client; past these the session is destroyed. (Rapid reset, RST_STREAM right
      // after HEADERS over and over, is rate-limited by node's nghttp2 itself.)
      maxSessionRejectedStreams: 100,
      maxSessionInvalidFrames: 100,
    },
    (req, res) => {
      bodyMustFlow(req.stream, lim.requestTimeoutMs);
      (handler as (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void)(req, res);
    },
  );
  if (takeStream)
    routeStreams(h2, (stream, headers) => {
      if (!takeStream(stream, headers)) return false;
      bodyMustFlow(stream, lim.requestTimeoutMs);
      return true;
    });
  const sockets = new Set<net.Socket>();
  const sessions = new Set<http2.ServerHttp2Session>();
  const streams = new Map<http2.ServerHttp2Session, number>();
  h2.on("session", (s) => {
    // The connection's window bounds what one client can have the gateway hold at once, however
    // many streams it spreads it over.
    s.setLocalWindowSize(CONNECTION_WINDOW_BYTES);
    sessions.add(s);
    streams.set(s, 0);
    s.on("stream", (stream) => {
      streams.set(s, (streams.get(s) ?? 0) + 1);
      stream.once("close", () => streams.set(s, (streams.get(s) ?? 1) - 1));
    });
    s.on("close", () => {
      sessions.delete(s);
      streams.delete(s);
    });
  });
  // node:http2 calls this after idleTimeoutMs without a frame either way; a session that is only
  // waiting on a quiet stream (a watch between events) is not idle.
  h2.setTimeout(lim.idleTimeoutMs);
  h2.on("timeout", ((session: http2.ServerHttp2Session) => {
    if ((streams.get(session) ?? 0) === 0) session.close();
  }) as () => void);

  const tcp = net.createServer((socket) => {
    sockets.add(socket);
    // Until the protocol is known, nobody else bounds this connection: one that sends nothing,
    // or dribbles the preface a byte at a time, is dropped.
    const sniffing = setTimeout(() => socket.destroy(), lim.headersTimeoutMs);
    socket.on("close", () => {
      clearTimeout(sniffing);
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
      clearTimeout(sniffing);
      // Either server gets the socket itself, paused, with the bytes read so far put back.
      // node:http2 hands bytes already buffered on a socket to nghttp2 when it sets up the
      // session, then reads the socket's handle natively; HTTP/1.1 reads them as usual.
      socket.pause();
      socket.unshift(seen);
      if (looksH2) {
        // Uploads crawl at about 1 MB/s with Nagle on: every flow-control round trip waits out
        // the peer's delayed ACK.
        socket.setNoDelay(true);
        h2.emit("connection", socket);
      } else {
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

/**
 * node:http2 makes the request/response pair and emits 'request' from a listener of its own on
 * the server's 'stream' event (added when a request handler is). That listener is taken off and
 * called only for the streams `take` declines, so a taken stream is left to its taker alone while
 * every other stream is served exactly as node would (CONNECT, Expect, the compat objects).
 */
function routeStreams(
  h2: http2.Http2Server,
  take: (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => boolean,
): void {
  const compat = h2.listeners("stream") as Array<(...args: unknown[]) => void>;
  // Another node may dispatch differently; then nothing is taken and node serves every stream.
  if (compat.length !== 1) return;
  const serve = compat[0]!;
  h2.removeListener("stream", serve);
  h2.on("stream", function (this: http2.Http2Server, stream: http2.ServerHttp2Stream, headers, ...rest: unknown[]) {
    if (!take(stream, headers)) serve.call(this, stream, headers, ...rest);
  });
}

/**
 * An HTTP/2 request body that stops flowing for `ms` is cut (RST_STREAM CANCEL, which reaches the
 * upstream as a cancellation). The stream's own timer counts traffic either way and is stopped
 * once the body is complete, so it bounds only the wait for the request, never a response.
 */
function bodyMustFlow(stream: http2.ServerHttp2Stream, ms: number) {
  if (stream.readableEnded || stream.closed) return;
  stream.setTimeout(ms, () => {
    if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
  });
  stream.once("end", () => stream.setTimeout(0));
}
