import net from "node:net";
import { apisByKey } from "./apis/registry.js";
import { API_VERSIONS_KEY, unsupportedApiVersionsBody } from "./apis/api-versions.js";
import { MalformedRequestError, Reader } from "./protocol/reader.js";
import { Writer } from "./protocol/writer.js";
import type { Broker } from "./broker.js";
import type { Logger } from "./logger.js";

/** Requests decoded but not yet answered on one connection before we stop reading from it. */
const MAX_IN_FLIGHT = 128;
/** apiKey + apiVersion + correlationId: anything shorter cannot even be answered. */
const MIN_FRAME = 8;

type Outcome = { chunks: Buffer[] } | null | "close";

/**
 * One client connection. Requests are decoded and started in arrival order (so appends and commits
 * happen in that order), may complete out of order (a held JoinGroup, a long-polling Fetch, an fsync),
 * and their responses are written strictly in request order, as the Kafka protocol requires.
 */
class Connection {
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  private tail: Promise<void> = Promise.resolve();
  private inFlight = 0;
  /** Set when a request could not be parsed: nothing after it on this connection is acted on. */
  private closing = false;
  private readonly abort = new AbortController();
  private readonly clientHost: string;

  constructor(
    private readonly socket: net.Socket,
    private readonly broker: Broker,
    private readonly logger: Logger,
  ) {
    this.clientHost = socket.remoteAddress ?? "";
    socket.setNoDelay(true);
    socket.on("data", (d) => this.onData(d));
    socket.on("error", () => {}); // ECONNRESET etc.: the close handler does the cleanup
    socket.on("close", () => this.abort.abort());
    socket.on("drain", () => this.maybeResume());
  }

  private onData(data: Buffer): void {
    this.buffered.push(data);
    this.bufferedBytes += data.length;
    while (!this.socket.destroyed && !this.closing && this.bufferedBytes >= 4) {
      const size = this.peekSize();
      if (size < MIN_FRAME || size > this.broker.settings.maxFrameBytes) {
        this.logger.warn("closing connection: bad frame size", { size, client: this.clientHost });
        this.socket.destroy();
        return;
      }
      // Join chunks only once the whole frame is here: a large frame arrives in many small reads.
      if (this.bufferedBytes < 4 + size) return;
      const all = this.buffered.length === 1 ? this.buffered[0]! : Buffer.concat(this.buffered, this.bufferedBytes);
      const frame = all.subarray(4, 4 + size);
      const rest = all.subarray(4 + size);
      this.buffered = rest.length > 0 ? [rest] : [];
      this.bufferedBytes = rest.length;
      this.dispatch(frame);
    }
  }

  private peekSize(): number {
    const first = this.buffered[0]!;
    if (first.length >= 4) return first.readInt32BE(0);
    const head = Buffer.concat(this.buffered, this.bufferedBytes);
    this.buffered = [head];
    return head.readInt32BE(0);
  }

  private dispatch(frame: Buffer): void {
    const apiKey = frame.readInt16BE(0);
    const apiVersion = frame.readInt16BE(2);
    const correlationId = frame.readInt32BE(4);
    let outcome: Promise<Outcome> | Outcome;
    try {
      outcome = this.process(frame, apiKey, apiVersion, correlationId);
    } catch (err) {
      // A handler bug or an I/O error (disk full) costs this connection, never the broker.
      outcome = Promise.reject(err);
    }
    if (outcome === "close") {
      // Earlier requests still get their answers (the tail writes them first); later bytes are ignored.
      this.closing = true;
      this.socket.pause();
    }
    this.inFlight++;
    if (this.inFlight >= MAX_IN_FLIGHT) this.socket.pause();
    this.tail = this.tail.then(async () => {
      let result: Outcome;
      try {
        result = await outcome;
      } catch (err) {
        this.logger.error("request failed", { apiKey, apiVersion, error: String(err) });
        result = "close";
      }
      this.inFlight--;
      if (this.socket.destroyed) return;
      if (result === "close") {
        this.socket.destroy();
        return;
      }
      if (result) {
        this.socket.cork();
        for (const c of result.chunks) this.socket.write(c);
        this.socket.uncork();
        // A client that stops reading its responses stops being read from.
        if (this.socket.writableNeedDrain) this.socket.pause();
      }
      this.maybeResume();
    });
  }

  private maybeResume(): void {
    if (this.inFlight < MAX_IN_FLIGHT && !this.socket.writableNeedDrain && this.socket.isPaused()) this.socket.resume();
  }

  /** Everything up to the handler's first await runs synchronously here, in arrival order. */
  private process(
    frame: Buffer,
    apiKey: number,
    apiVersion: number,
    correlationId: number,
  ): Promise<Outcome> | Outcome {
    const api = apisByKey.get(apiKey);
    if (!api) {
      // Kafka cannot parse a request for an API it does not know and closes the connection.
      this.logger.warn("closing connection: unknown api key", { apiKey, client: this.clientHost });
      return "close";
    }
    if (apiVersion < api.minVersion || apiVersion > api.maxVersion) {
      if (apiKey === API_VERSIONS_KEY && apiVersion > api.maxVersion) {
        // The one request every version of every client must be able to read an answer to.
        return respond(correlationId, false, unsupportedApiVersionsBody());
      }
      this.logger.warn("closing connection: unsupported version", { apiKey, apiVersion, client: this.clientHost });
      return "close";
    }
    const flexible = api.firstFlexibleVersion !== undefined && apiVersion >= api.firstFlexibleVersion;
    let req: unknown;
    let clientId: string;
    try {
      const r = new Reader(frame, 8);
      clientId = r.nullableString() ?? "";
      if (flexible) r.skipTaggedFields();
      req = api.decode(r, apiVersion);
    } catch (err) {
      if (err instanceof MalformedRequestError) {
        this.logger.warn("closing connection: malformed request", { apiKey, apiVersion, error: err.message });
        return "close";
      }
      throw err;
    }
    const ctx = { broker: this.broker, apiVersion, clientId, clientHost: this.clientHost, signal: this.abort.signal };
    const handled = api.handle(req, ctx);
    // ApiVersions v3 is the only flexible request we accept; its response still uses header v0.
    if (handled instanceof Promise) return handled.then((body) => (body ? respond(correlationId, false, body) : null));
    return handled ? respond(correlationId, false, handled) : null;
  }

  close(): void {
    this.socket.destroy();
  }
}

function respond(correlationId: number, taggedHeader: boolean, body: Writer): Outcome {
  const head = new Writer(16);
  const bodyChunks = body.toChunks();
  const bodyLength = bodyChunks.reduce((n, c) => n + c.length, 0);
  head.int32(bodyLength + 4 + (taggedHeader ? 1 : 0)).int32(correlationId);
  if (taggedHeader) head.emptyTaggedFields();
  return { chunks: [...head.toChunks(), ...bodyChunks] };
}

export interface ListenResult {
  port: number;
  close(): Promise<void>;
}

/**
 * Listens on `host`; for "localhost" on both 127.0.0.1 and ::1 with one port, because clients may
 * resolve the name either way and must reach the broker they were told about.
 */
export async function listen(host: string, port: number, broker: Broker, logger: Logger): Promise<ListenResult> {
  const connections = new Set<Connection>();
  const makeServer = (): net.Server =>
    net.createServer((socket) => {
      const c = new Connection(socket, broker, logger);
      connections.add(c);
      socket.on("close", () => connections.delete(c));
    });
  const listenOne = (server: net.Server, h: string, p: number): Promise<number> =>
    new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen({ host: h, port: p, exclusive: true }, () => {
        server.off("error", reject);
        server.on("error", (err) => logger.error("listener error", { error: String(err) }));
        resolve((server.address() as net.AddressInfo).port);
      });
    });
  const closeServer = (s: net.Server): Promise<void> => new Promise((resolve) => s.close(() => resolve()));

  const hosts = host === "localhost" ? ["127.0.0.1", "::1"] : [host];
  for (let attempt = 0; ; attempt++) {
    const servers: net.Server[] = [];
    try {
      let actual = port;
      for (const h of hosts) {
        const s = makeServer();
        try {
          actual = await listenOne(s, h, actual);
          servers.push(s);
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          // A machine without IPv6 still serves localhost on 127.0.0.1.
          if (h === "::1" && (code === "EADDRNOTAVAIL" || code === "EAFNOSUPPORT")) continue;
          throw err;
        }
      }
      return {
        port: actual,
        async close() {
          const closing = servers.map(closeServer);
          for (const c of connections) c.close();
          await Promise.all(closing);
        },
      };
    } catch (err) {
      await Promise.all(servers.map(closeServer));
      // An ephemeral port free on 127.0.0.1 may be taken on ::1: pick another.
      if (port === 0 && (err as NodeJS.ErrnoException).code === "EADDRINUSE" && attempt < 10) continue;
      throw err;
    }
  }
}
