import http2 from "node:http2";
import net from "node:net";

/**
 * One HTTP/2 connection per upstream target, shared by every call forwarded to it, made again
 * when the last one goes away (GOAWAY, close, error). A call never opens a connection of its own.
 */
export interface UpstreamPool {
  session(target: string): http2.ClientHttp2Session;
  close(): void;
}

/** grpc-js target spellings (host:port, dns:host:port, dns:///host:port) as an http:// authority. */
export function authorityOf(target: string): string {
  const bare = target.replace(/^dns:(\/\/[^/]*\/)?/, "");
  return `http://${bare}`;
}

const KEEPALIVE_INTERVAL_MS = 30_000;
const KEEPALIVE_TIMEOUT_MS = 10_000;

// Uploads arrive faster than the default 64 KiB windows let through in one round trip.
const WINDOW_BYTES = 8 * 1024 * 1024;

export function createUpstreamPool(): UpstreamPool {
  const sessions = new Map<string, http2.ClientHttp2Session>();
  let closed = false;

  function open(target: string): http2.ClientHttp2Session {
    const url = new URL(authorityOf(target));
    const session = http2.connect(url, {
      settings: { initialWindowSize: WINDOW_BYTES, enablePush: false },
      peerMaxConcurrentStreams: 10_000,
      // Nagle would hold each small frame for the previous one's ACK.
      createConnection: () =>
        net.connect({ host: url.hostname.replace(/^\[|\]$/g, ""), port: Number(url.port) || 80, noDelay: true }),
    });
    const forget = () => {
      if (sessions.get(target) === session) sessions.delete(target);
    };
    session.on("connect", () => session.setLocalWindowSize(WINDOW_BYTES));
    // A connection that died without a FIN or RST would hold every stream on it until its
    // deadline (and a watch for ever): a PING left unanswered closes it, as grpc-js' keepalive does.
    const keepalive = setInterval(() => {
      const unanswered = setTimeout(() => session.destroy(), KEEPALIVE_TIMEOUT_MS).unref();
      try {
        session.ping(() => clearTimeout(unanswered));
      } catch {
        clearTimeout(unanswered);
      }
    }, KEEPALIVE_INTERVAL_MS).unref();
    session.on("close", () => clearInterval(keepalive));
    // An unreachable upstream or a dropped connection fails the streams on it, each of which the
    // caller answers for; the session only has to stop being handed out.
    session.on("error", forget);
    session.on("goaway", forget);
    session.on("close", forget);
    // Idle pooled connections must not keep a stopping process alive.
    session.unref();
    sessions.set(target, session);
    return session;
  }

  return {
    session(target) {
      if (closed) throw new Error("the upstream pool is closed");
      const s = sessions.get(target);
      if (s && !s.closed && !s.destroyed) return s;
      return open(target);
    },
    close() {
      closed = true;
      for (const s of sessions.values()) s.close();
      sessions.clear();
    },
  };
}
