import { createServer, type Server, type Socket } from "node:net";
import type { PGlite } from "@electric-sql/pglite";
import { logger } from "../../platform/telemetry/logger.js";

/**
 * Serves one PGlite session to many Postgres wire-protocol clients.
 *
 * PGlite is a single backend, so every client shares its session. Sharing is only safe in whole
 * units: a simple Query, or an extended-protocol run up to its Sync. The unnamed statement and
 * portal live in the session, so a run split by another client's messages binds or executes the
 * wrong thing (pglite-socket 0.2.17 interleaves per message, which is why this file exists).
 * Each unit is handed to PGlite as one buffer (it consumes every message in it before returning),
 * and after a unit that leaves the session in a transaction block, or in the middle of a run the
 * client ended with Flush, that client owns the session until a unit leaves it idle again.
 *
 * Not supported: COPY FROM STDIN (refused with an error, see refuseCopyFromStdin), CancelRequest
 * (the connection is closed; a statement runs synchronously in PGlite and cannot be interrupted),
 * NOTIFY delivery to the client that listened, and per-client session state: SET, named prepared
 * statements and temp tables are shared by every client. COPY TO STDOUT works (it is one unit).
 */

export interface PgMultiplexerOptions {
  db: PGlite;
  host: string;
  /** 0 picks a free port; read it back from `port` after start(). */
  port: number;
  maxConnections: number;
}

// Startup-phase request codes (first message, no type byte).
const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;
const CANCEL_REQUEST = 80877102;
const PROTOCOL_MAJOR_3 = 3;
// Postgres's own limits: a startup packet over 10000 bytes or a message over 1 GiB is refused.
const MAX_STARTUP_PACKET = 10_000;
const MAX_MESSAGE = 1 << 30;

const T = (c: string) => c.charCodeAt(0);
const QUERY = T("Q");
const PARSE = T("P");
const SYNC = T("S");
const FLUSH = T("H");
const FUNCTION_CALL = T("F");
const TERMINATE = T("X");
const COPY_DATA = T("d");
const COPY_DONE = T("c");
const COPY_FAIL = T("f");
const READY_FOR_QUERY = T("Z");
const IDLE = T("I");

// Output is copied out of PGlite's heap (the view is reused and can detach when memory grows) into
// blocks of this size, so a large result reaches the socket as it is produced without one write per
// 8 KiB chunk PGlite hands over.
const OUTPUT_BLOCK = 64 * 1024;
// A client pipelining faster than the session runs its units stops being read beyond these.
const MAX_QUEUED_UNITS = 32;
const MAX_QUEUED_BYTES = 16 * 1024 * 1024;
const HELD_SESSION_WARNING_MS = 5_000;

interface Unit {
  bytes: Buffer;
  /** False when the unit ended with Flush: the run continues and its unnamed portal must survive. */
  endsRun: boolean;
  startup: boolean;
}

class Connection {
  readonly units: Unit[] = [];
  queuedBytes = 0;
  /** Bytes received but not yet framed into messages. */
  private inbound: Buffer[] = [];
  private inboundBytes = 0;
  /** Messages of the extended-protocol run being received, not yet ended by Sync or Flush. */
  private run: Buffer[] = [];
  started = false;
  /** Inside an extended-protocol run on the session (its last unit ended with Flush). */
  inRun = false;
  /** Waiting in the scheduler's ready queue. */
  queued = false;
  /** Output not yet drained to the kernel: its next unit waits, so a slow reader cannot bloat us. */
  blocked = false;
  running = false;
  terminating = false;
  closed = false;

  constructor(
    readonly id: number,
    readonly socket: Socket,
    private readonly mux: PgMultiplexer,
  ) {}

  receive(chunk: Buffer): void {
    this.inbound.push(chunk);
    this.inboundBytes += chunk.length;
    while (!this.closed && !this.terminating) {
      if (!this.started) {
        if (!this.nextStartupPacket()) break;
        continue;
      }
      const message = this.nextMessage();
      if (!message) break;
      this.onMessage(message);
    }
  }

  private nextStartupPacket(): Buffer | undefined {
    if (this.inboundBytes < 8) return undefined;
    const head = this.peek(8);
    const length = head.readInt32BE(0);
    const code = head.readInt32BE(4);
    if (length < 8 || length > MAX_STARTUP_PACKET) {
      this.fail("08P01", "invalid length of startup packet");
      return undefined;
    }
    if (this.inboundBytes < length) return undefined;
    const packet = this.take(length);
    if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
      this.socket.write("N");
    } else if (code === CANCEL_REQUEST) {
      this.mux.close(this);
    } else if (code >>> 16 === PROTOCOL_MAJOR_3) {
      // PGlite answers the startup itself (authentication ok, parameters, key data, ready); it runs
      // as a unit so that its ReadyForQuery is not sent while another client holds a transaction.
      this.started = true;
      this.mux.enqueue(this, { bytes: packet, endsRun: true, startup: true });
    } else {
      this.fail("0A000", `unsupported frontend protocol ${code >>> 16}.${code & 0xffff}`);
    }
    return packet;
  }

  private nextMessage(): Buffer | undefined {
    if (this.inboundBytes < 5) return undefined;
    const length = this.peek(5).readInt32BE(1);
    if (length < 4 || length > MAX_MESSAGE) {
      this.fail("08P01", "invalid message length");
      return undefined;
    }
    if (this.inboundBytes < length + 1) return undefined;
    return this.take(length + 1);
  }

  private onMessage(message: Buffer): void {
    const type = message[0];
    if (type === TERMINATE) {
      // Whatever came before Terminate still runs; an unfinished run is abandoned, as Postgres does.
      this.terminating = true;
      this.dropRun();
      if (this.units.length === 0 && !this.running) this.mux.close(this);
      return;
    }
    // Outside COPY, Postgres accepts and ignores these (a client may send them after a failed COPY).
    if (type === COPY_DATA || type === COPY_DONE || type === COPY_FAIL) return;
    this.run.push(type === QUERY || type === PARSE ? refuseCopyFromStdin(message) : message);
    if (type === QUERY || type === FUNCTION_CALL || type === SYNC || type === FLUSH) {
      const bytes = this.run.length === 1 ? this.run[0]! : Buffer.concat(this.run);
      this.run = [];
      this.mux.enqueue(this, { bytes, endsRun: type !== FLUSH, startup: false });
    }
  }

  dropRun(): void {
    this.run = [];
  }

  // Callers have checked that inboundBytes >= n.
  private peek(n: number): Buffer {
    if (this.inbound[0]!.length < n) this.inbound = [Buffer.concat(this.inbound)];
    return this.inbound[0]!;
  }

  private take(n: number): Buffer {
    const first = this.inbound[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.inbound.shift();
      else this.inbound[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let filled = 0;
      while (filled < n) {
        const head = this.inbound[0]!;
        const count = Math.min(head.length, n - filled);
        head.copy(out, filled, 0, count);
        filled += count;
        if (count === head.length) this.inbound.shift();
        else this.inbound[0] = head.subarray(count);
      }
    }
    this.inboundBytes -= n;
    return out;
  }

  /** Ends the connection the way Postgres ends a broken one: a FATAL error, then close. */
  fail(code: string, message: string): void {
    if (!this.socket.destroyed) this.socket.write(fatalError(code, message));
    this.mux.close(this);
  }
}

/**
 * Follows backend messages across the chunks PGlite emits and remembers the status byte of the
 * last ReadyForQuery: 'I' idle, 'T' in a transaction block, 'E' in a failed one. That is what the
 * client itself is told, so it decides ownership exactly as the client sees the session.
 */
class ReadyStatusTracker {
  status: number | undefined;
  private header = Buffer.alloc(5);
  private headerBytes = 0;
  private bodyLeft = 0;
  private type = 0;

  feed(data: Uint8Array): void {
    let i = 0;
    while (i < data.length) {
      if (this.headerBytes < 5) {
        this.header[this.headerBytes++] = data[i++]!;
        if (this.headerBytes === 5) {
          this.type = this.header[0]!;
          this.bodyLeft = this.header.readInt32BE(1) - 4;
          if (this.bodyLeft <= 0) this.headerBytes = 0;
        }
        continue;
      }
      if (this.type === READY_FOR_QUERY && this.bodyLeft === 1) this.status = data[i]!;
      const n = Math.min(this.bodyLeft, data.length - i);
      i += n;
      this.bodyLeft -= n;
      if (this.bodyLeft === 0) this.headerBytes = 0;
    }
  }
}

export class PgMultiplexer {
  private readonly db: PGlite;
  private readonly host: string;
  private readonly maxConnections: number;
  private server: Server | undefined;
  port: number;

  private readonly connections = new Set<Connection>();
  private nextId = 1;
  /** Connections with a unit to run, in the order they became ready: one unit per turn. */
  private ready: Connection[] = [];
  /** The connection whose transaction (or unfinished run) is open on the session. */
  private owner: Connection | undefined;
  /** Session status after the last unit, from its ReadyForQuery. */
  private status = IDLE;
  private pumping: Promise<void> | undefined;
  private heldWatch: NodeJS.Timeout | undefined;
  private stopping = false;

  constructor(opts: PgMultiplexerOptions) {
    this.db = opts.db;
    this.host = opts.host;
    this.port = opts.port;
    this.maxConnections = opts.maxConnections;
  }

  async start(): Promise<void> {
    await this.db.waitReady;
    const server = createServer((socket) => this.accept(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, this.host, () => {
        server.off("error", reject);
        const address = server.address();
        if (address && typeof address === "object") this.port = address.port;
        resolve();
      });
    });
    server.on("error", (err) => logger.error("embedded postgres listener failed", { error: err }));
  }

  /** Stops accepting, closes every client (rolling back an open transaction) and lets the last unit finish. */
  async stop(): Promise<void> {
    this.stopping = true;
    const closed = this.server ? new Promise<void>((r) => this.server!.close(() => r())) : Promise.resolve();
    for (const c of [...this.connections]) this.close(c, { destroy: true });
    await closed;
    while (this.pumping) await this.pumping;
  }

  get stats(): { connections: number; ready: number; owner: number | undefined } {
    return { connections: this.connections.size, ready: this.ready.length, owner: this.owner?.id };
  }

  private accept(socket: Socket): void {
    if (this.stopping || this.connections.size >= this.maxConnections) {
      socket.on("error", () => undefined);
      // Destroyed once written: a client that keeps its end open would otherwise hold up stop().
      socket.end(fatalError("53300", "sorry, too many clients already"));
      socket.destroySoon();
      return;
    }
    socket.setNoDelay(true);
    const c = new Connection(this.nextId++, socket, this);
    this.connections.add(c);
    socket.on("data", (chunk: Buffer) => c.receive(chunk));
    // ECONNRESET and friends: the close that follows does the cleaning up.
    socket.on("error", () => undefined);
    socket.on("close", () => this.close(c));
    socket.on("drain", () => {
      if (!c.blocked) return;
      c.blocked = false;
      this.makeReady(c);
      this.pump();
    });
  }

  enqueue(c: Connection, unit: Unit): void {
    c.units.push(unit);
    c.queuedBytes += unit.bytes.length;
    if (c.units.length >= MAX_QUEUED_UNITS || c.queuedBytes >= MAX_QUEUED_BYTES) c.socket.pause();
    this.makeReady(c);
    this.pump();
  }

  /**
   * Idempotent; safe from any callback. The owner's open transaction is rolled back by the pump.
   * Gentle by default, so a final error or the answers sent before Terminate still reach the
   * client; stop() destroys, since a client that does not read would otherwise hold it open.
   */
  close(c: Connection, { destroy = false } = {}): void {
    if (c.closed) {
      if (destroy) c.socket.destroy();
      return;
    }
    c.closed = true;
    c.units.length = 0;
    c.queuedBytes = 0;
    c.dropRun();
    this.connections.delete(c);
    // No "terminating connection" error first, as a Postgres shutdown would send: pg raises it as an
    // unhandled 'error' even on a client that is already ending (pool.end() does not wait for its
    // sockets to close), and callers stop this right after ending their pools.
    if (destroy) c.socket.destroy();
    else if (!c.socket.destroyed) {
      c.socket.end();
      c.socket.destroySoon();
    }
    if (this.owner === c) this.pump();
  }

  private makeReady(c: Connection): void {
    if (c.queued || c.closed || c.blocked || c === this.owner || c.units.length === 0) return;
    c.queued = true;
    this.ready.push(c);
  }

  private pump(): void {
    if (this.pumping) return;
    this.pumping = this.drainQueue().finally(() => {
      this.pumping = undefined;
    });
  }

  private async drainQueue(): Promise<void> {
    for (;;) {
      const owner = this.owner;
      if (owner?.closed) {
        await this.abandonSession(owner);
        continue;
      }
      let c: Connection | undefined;
      if (owner) {
        // The session is held: only the owner's next unit may run, whoever else is waiting.
        if (owner.blocked || owner.units.length === 0) {
          this.watchHeldSession(owner);
          return;
        }
        c = owner;
      } else {
        c = this.ready.shift();
        if (!c) return;
        c.queued = false;
        if (c.closed || c.blocked || c.units.length === 0) continue;
      }
      const unit = c.units.shift()!;
      c.queuedBytes -= unit.bytes.length;
      if (c.socket.isPaused() && c.units.length < MAX_QUEUED_UNITS / 2 && c.queuedBytes < MAX_QUEUED_BYTES / 2)
        c.socket.resume();
      c.running = true;
      try {
        await this.runUnit(c, unit);
      } finally {
        c.running = false;
      }
      if (c.terminating && c.units.length === 0) this.close(c);
      this.makeReady(c);
    }
  }

  /**
   * Everyone waits while a client holds the session between statements of its transaction. That is
   * normal for milliseconds; for seconds it usually means a deadlock in the application (waiting,
   * inside a transaction, on a query sent through another pooled connection), so say which.
   */
  private watchHeldSession(owner: Connection): void {
    if (this.heldWatch) return;
    const timer = setTimeout(() => {
      if (this.owner !== owner || owner.closed || this.ready.length === 0) return;
      logger.warn("embedded postgres: clients are waiting on an open transaction", {
        owner_connection: owner.id,
        owner_address: `${owner.socket.remoteAddress}:${owner.socket.remotePort}`,
        waiting_connections: this.ready.length,
        held_ms: HELD_SESSION_WARNING_MS,
      });
    }, HELD_SESSION_WARNING_MS);
    timer.unref();
    this.heldWatch = timer;
  }

  private async runUnit(c: Connection, unit: Unit): Promise<void> {
    const out = new OutputStream(c.socket);
    const tracker = new ReadyStatusTracker();
    // PGlite keeps the last output callback after the call returns and reuses it for output it
    // produces later on its own, which must not reach this client.
    let live = true;
    try {
      await this.db.runExclusive(() =>
        this.db.execProtocolRawStream(unit.bytes, {
          onRawData: (data) => {
            if (!live) return;
            tracker.feed(data);
            out.write(data);
          },
        }),
      );
    } catch (err) {
      // PGlite threw rather than answering with an ErrorResponse: the session may be gone. This
      // client cannot know where its protocol stands, so it is cut off, as a backend crash would.
      logger.error("embedded postgres failed a request", { connection: c.id, error: err });
      out.end();
      if (tracker.status !== undefined) this.status = tracker.status;
      c.inRun = false;
      c.fail("XX000", `embedded postgres: ${err instanceof Error ? err.message : String(err)}`);
      this.setOwner(this.status === IDLE ? undefined : c);
      return;
    } finally {
      live = false;
      out.end();
    }
    if (tracker.status !== undefined) this.status = tracker.status;
    if (unit.startup) c.inRun = false;
    else c.inRun = !unit.endsRun;
    this.setOwner(c.inRun || this.status !== IDLE ? c : undefined);
    if (c.socket.writableNeedDrain) c.blocked = true;
  }

  /**
   * The owner went away with the session mid-transaction or mid-run. A run has no abort message,
   * so a statement that cannot parse fails it (aborting its implicit transaction) and Sync ends
   * it; ROLLBACK then ends an explicit transaction. Without this, every other client would wait
   * on a transaction nobody will finish.
   */
  private async abandonSession(c: Connection): Promise<void> {
    const parts: Buffer[] = [];
    if (c.inRun) parts.push(wireMessage("P", "\0medmesh: client went away\0\0\0"), wireMessage("S", ""));
    parts.push(wireMessage("Q", "ROLLBACK\0"));
    const tracker = new ReadyStatusTracker();
    let live = true;
    try {
      await this.db.runExclusive(() =>
        this.db.execProtocolRawStream(Buffer.concat(parts), {
          onRawData: (d) => {
            if (live) tracker.feed(d);
          },
        }),
      );
    } catch (err) {
      logger.error("embedded postgres could not roll back a departed client's transaction", {
        connection: c.id,
        error: err,
      });
    } finally {
      live = false;
    }
    this.status = tracker.status ?? IDLE;
    c.inRun = false;
    if (this.status !== IDLE) {
      logger.error("embedded postgres session not idle after rolling back a departed client", {
        status: String.fromCharCode(this.status),
      });
    }
    // Released even if the rollback failed: a stuck session would stop every client for good.
    this.setOwner(undefined);
  }

  private setOwner(c: Connection | undefined): void {
    if (c === this.owner) return;
    this.owner = c;
    clearTimeout(this.heldWatch);
    this.heldWatch = undefined;
  }
}

/** Copies PGlite's output into blocks and writes each as it fills. */
class OutputStream {
  private block: Buffer | undefined;
  private used = 0;

  constructor(private readonly socket: Socket) {}

  write(data: Uint8Array): void {
    if (this.socket.destroyed) return;
    let offset = 0;
    while (offset < data.length) {
      this.block ??= Buffer.allocUnsafe(OUTPUT_BLOCK);
      const n = Math.min(OUTPUT_BLOCK - this.used, data.length - offset);
      this.block.set(data.subarray(offset, offset + n), this.used);
      this.used += n;
      offset += n;
      if (this.used === OUTPUT_BLOCK) {
        this.socket.write(this.block);
        this.block = undefined;
        this.used = 0;
      }
    }
  }

  end(): void {
    if (this.block && this.used > 0 && !this.socket.destroyed) this.socket.write(this.block.subarray(0, this.used));
    this.block = undefined;
    this.used = 0;
  }
}

function wireMessage(type: string, body: string): Buffer {
  const payload = Buffer.from(body, "utf8");
  const m = Buffer.allocUnsafe(5 + payload.length);
  m.write(type, 0, "latin1");
  m.writeInt32BE(4 + payload.length, 1);
  payload.copy(m, 5);
  return m;
}

/** Only ever FATAL: the multiplexer speaks for itself just before it closes a connection. */
function fatalError(code: string, message: string): Buffer {
  const field = (k: string, v: string) => `${k}${v}\0`;
  return wireMessage("E", field("S", "FATAL") + field("V", "FATAL") + field("C", code) + field("M", message) + "\0");
}

// A COPY ... FROM STDIN statement at the start of a statement (after optional comments).
const COPY_FROM_STDIN = /(?:^|;)\s*(?:(?:--[^\n]*(?:\n|$)|\/\*[\s\S]*?\*\/)\s*)*copy\b[^;]*?\bfrom\s+stdin\b/i;
const REFUSAL =
  "DO $medmesh$ BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', " +
  "MESSAGE = 'COPY FROM STDIN is not supported by the embedded Postgres'; END $medmesh$";

/**
 * PGlite cannot wait for copy data that is not already in its input: asked for more, its backend
 * exits, and every later request to it hangs, so one client would take the database from all of
 * them. The statement is swapped for one that raises an error, which the client gets as from any
 * failed statement (failing its transaction, if any), and the session lives on.
 */
function refuseCopyFromStdin(message: Buffer): Buffer {
  // Q: the query string; P: statement name, then the query string.
  let start = 5;
  if (message[0] === PARSE) start = message.indexOf(0, 5) + 1;
  const end = message.indexOf(0, start);
  if (start <= 0 || end < 0) return message;
  const sql = message.toString("utf8", start, end);
  if (!COPY_FROM_STDIN.test(sql)) return message;
  const rest = message.subarray(end);
  const body = Buffer.concat([message.subarray(5, start), Buffer.from(REFUSAL, "utf8"), rest]);
  const rewritten = Buffer.allocUnsafe(5 + body.length);
  rewritten[0] = message[0]!;
  rewritten.writeInt32BE(4 + body.length, 1);
  body.copy(rewritten, 5);
  return rewritten;
}
