/**
 * Devices streaming events over gRPC (DeviceService.StreamEvents, one bidirectional stream per
 * device) from a process that writes the HTTP/2 frames itself, for the ingest benchmark. On these
 * 2 cores the load generator shares the machine with the mesh it measures: connect-node's client
 * spends about 40 µs of CPU per event (an async iterator step, a message object, the reflective
 * encoder and node:http2's stream machinery), some 0.4 of a core at 10,000 events/s, taken from
 * the mesh and charged to it as a lower rate or a later send -> visible. This one costs 2 to 3 µs
 * per event closed loop, and 6 to 7 paced at 10,000 events/s, where the server acknowledges in
 * smaller steps and each acknowledgement read is a wake-up of its own.
 *
 * Here an event is encoded by hand straight into the connection's output (a DATA frame header, the
 * 5-byte gRPC prefix and the StreamEventsRequest, about 120 bytes), every frame that comes back is
 * read by its 9-byte header, and an acknowledgement is one varint read from the DATA. What a real
 * client owes the server is kept: one DATA frame per event, the connection's and each stream's
 * send windows (events wait in the device's queue when either is spent, and go on WINDOW_UPDATE),
 * PING and SETTINGS answered, the stream half-closed only after its last acknowledgement and done
 * only on the server's trailers. It asks for SETTINGS_HEADER_TABLE_SIZE 0, so the server's header
 * blocks use no dynamic table and the trailers' grpc-status can be read without an HPACK decoder.
 *
 * Two ways to drive the devices: closed loop (each keeps `window` events unacknowledged, so the
 * server sets the rate) or paced (`ratePerDevice`: event i of a device is due at t0 + i / rate and
 * carries that scheduled time as its event_time, so a generator or server falling behind shows as
 * latency instead of a lower offered rate; still at most `window` unacknowledged, and the time
 * devices spent with a due event and a full window is counted).
 *
 * It runs in its own forked process so its CPU is its own (reported for the run).
 */
import net from "node:net";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { varintSize, writeVarint } from "../../services/devices/record-codec.js";
import { FLAG, FRAME, grpcHeaderBlock } from "./h2-wire.js";
import { inOwnProcess, serveInOwnProcess } from "./own-process.js";

export interface BidiDevice {
  deviceId: string;
  /** The stream's authorization header value: `Bearer <device token>`. */
  authorization: string;
  /** Sequence of the device's first event in this run: 1 for a new device, else the last run's nextSequence. */
  firstSequence: number;
}

export interface BidiStreamsOptions {
  /** http://host:port of a gRPC server speaking h2c with prior knowledge (a service or the gateway). */
  origin: string;
  /** /medmesh.devices.v1.DeviceService/StreamEvents */
  path: string;
  devices: BidiDevice[];
  /**
   * HTTP/2 connections; device i streams on connection i % connections. The gateway takes at most
   * 100 streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS); more are refused (reset, code 7).
   * Fewer connections mean fewer, larger socket writes and reads on both sides.
   */
  connections: number;
  /** How long devices send. */
  durationMs: number;
  /** Most events a device has sent and not seen acknowledged. */
  window: number;
  /** Events per second per device, on a schedule; unset: closed loop, as fast as `window` allows. */
  ratePerDevice?: number;
  /** After `durationMs`, how long a device waits for its last acknowledgement, then for the trailers. Default 30 s. */
  drainTimeoutMs?: number;
}

export interface BidiDeviceResult {
  deviceId: string;
  /** Events sent in this run. */
  sent: number;
  /** Events of this run acknowledged. */
  acked: number;
  /** Where the device's next run starts: one past its highest acknowledged sequence. */
  nextSequence: number;
  /** Why its stream did not end cleanly (grpc-status 0 after the half-close). */
  error?: string;
}

export interface BidiStreamsResult {
  devices: BidiDeviceResult[];
  sent: number;
  acked: number;
  /** Devices whose stream failed, by kind. */
  errors: Record<string, number>;
  /** Acknowledgement messages received (one may cover many events). */
  acks: number;
  /** Wall clock (ms since the epoch) when the devices started sending: event times are at or after it. */
  startedAt: number;
  /** From the start until the devices stopped sending, seconds. */
  sendSeconds: number;
  /** From the start until the last stream ended, seconds. */
  seconds: number;
  /**
   * From each event's event_time (when it was sent; paced: when it was due) to its acknowledgement,
   * milliseconds, over every acknowledged event.
   */
  ackLatencyMs: { p50: number; p99: number; max: number };
  /** Paced: device-milliseconds spent with an event due and `window` events unacknowledged. */
  windowBlockedMs: number;
  /** Paced: how many times a device found its window full with an event due. */
  windowBlocked: number;
  /** Paced: the latest an event went out after its scheduled time, milliseconds. */
  maxLagMs: number;
  /** Events that waited for an HTTP/2 send window (the server not reading, or a slow WINDOW_UPDATE). */
  flowControlWaits: number;
  /** CPU the generator's process spent over the whole run, seconds (user + system). */
  generatorCpuSeconds: number;
}

interface ChildInput {
  host: string;
  port: number;
  devices: { deviceId: string; headerBlock: string; firstSequence: number }[];
  connections: number;
  durationMs: number;
  window: number;
  ratePerDevice: number | undefined;
  drainTimeoutMs: number;
}

type ChildOutput = Omit<BidiStreamsResult, "generatorCpuSeconds" | "errors"> & { cpuSeconds: number };

const CANCEL = 0x8;
// Paced: the shortest sleep between sends. Events due within it go out in one socket write (on
// loopback a write costs its sender some 20 µs, the receiving side's TCP work included); each
// still carries its own scheduled time, so the wait counts in the latency.
const TICK_MS = 2;
const MAX_WINDOW = 0x7fffffff;
// "grpc-status" Huffman-coded (RFC 7541, appendix B), as node's nghttp2 sends the name.
const GRPC_STATUS_HUFFMAN = Buffer.from("9acac8b21234da8f", "hex");

function writeFrameHeader(b: Buffer, at: number, length: number, type: number, flags: number, streamId: number) {
  b[at] = length >>> 16;
  b[at + 1] = (length >>> 8) & 0xff;
  b[at + 2] = length & 0xff;
  b[at + 3] = type;
  b[at + 4] = flags;
  b.writeUInt32BE(streamId, at + 5);
}

function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(9 + payload.length);
  writeFrameHeader(b, 0, payload.length, type, flags, streamId);
  payload.copy(b, 9);
  return b;
}

const decimalDigits = (v: number) => (v < 10 ? 1 : Math.floor(Math.log10(v) + 1e-9) + 1);

/**
 * StreamEventsRequest{event: DeviceEvent{device_id, sequence, client_id "b<sequence>", event_time,
 * readings {pulse: 60 + sequence % 40, spo2: 90 + sequence % 10}}}, the fields in number order as
 * toBinary writes them, into `b` at `at`; returns the end. `idField` is the device's field 1,
 * ready-made (tag, length, id). Besides that field the request takes at most 100 bytes.
 */
export function writeStreamEventsRequest(
  b: Buffer,
  at: number,
  idField: Buffer,
  sequence: number,
  eventTimeMs: number,
): number {
  const seconds = Math.floor(eventTimeMs / 1000);
  const nanos = Math.min(999_999_999, Math.round((eventTimeMs - seconds * 1000) * 1e6));
  const timeLength = (seconds ? 1 + varintSize(seconds) : 0) + (nanos ? 1 + varintSize(nanos) : 0);
  const digits = decimalDigits(sequence);
  const eventLength = idField.length + 1 + varintSize(sequence) + 3 + digits + 2 + timeLength + 2 + 16 + 2 + 15;
  b[at++] = 0x0a;
  at = writeVarint(b, at, eventLength);
  at += idField.copy(b, at);
  b[at++] = 0x10;
  at = writeVarint(b, at, sequence);
  b[at++] = 0x1a;
  b[at++] = 1 + digits;
  b[at++] = 0x62; // "b"
  for (let i = digits - 1, v = sequence; i >= 0; i--, v = Math.floor(v / 10)) b[at + i] = 0x30 + (v % 10);
  at += digits;
  b[at++] = 0x22;
  b[at++] = timeLength;
  if (seconds) {
    b[at++] = 0x08;
    at = writeVarint(b, at, seconds);
  }
  if (nanos) {
    b[at++] = 0x10;
    at = writeVarint(b, at, nanos);
  }
  // readings: map entries {1: name, 2: double}
  b[at++] = 0x2a;
  b[at++] = 16;
  b[at++] = 0x0a;
  b[at++] = 5;
  at += b.write("pulse", at, "latin1");
  b[at++] = 0x11;
  at = b.writeDoubleLE(60 + (sequence % 40), at);
  b[at++] = 0x2a;
  b[at++] = 15;
  b[at++] = 0x0a;
  b[at++] = 4;
  at += b.write("spo2", at, "latin1");
  b[at++] = 0x11;
  return b.writeDoubleLE(90 + (sequence % 10), at);
}

/** Field 1 of DeviceEvent for this id: tag, length, bytes. */
export function deviceIdField(deviceId: string): Buffer {
  const id = Buffer.from(deviceId, "utf8");
  const b = Buffer.alloc(1 + 5 + id.length);
  b[0] = 0x0a;
  const at = writeVarint(b, 1, id.length);
  return b.subarray(0, at + id.copy(b, at));
}

export async function bidiStreamsLoad(opts: BidiStreamsOptions): Promise<BidiStreamsResult> {
  const url = new URL(opts.origin);
  const input: ChildInput = {
    host: url.hostname,
    port: Number(url.port),
    devices: opts.devices.map((d) => ({
      deviceId: d.deviceId,
      headerBlock: grpcHeaderBlock(url.host, opts.path, { authorization: d.authorization }).toString("hex"),
      firstSequence: d.firstSequence,
    })),
    connections: Math.max(1, Math.min(opts.connections, opts.devices.length)),
    durationMs: opts.durationMs,
    window: opts.window,
    ratePerDevice: opts.ratePerDevice,
    drainTimeoutMs: opts.drainTimeoutMs ?? 30_000,
  };
  const out = await inOwnProcess<ChildInput, ChildOutput>(import.meta.url, "--bidi-load-child", input);
  const errors: Record<string, number> = {};
  for (const d of out.devices) if (d.error) errors[d.error] = (errors[d.error] ?? 0) + 1;
  const { cpuSeconds, ...rest } = out;
  return { ...rest, errors, generatorCpuSeconds: cpuSeconds };
}

interface Stream {
  index: number;
  deviceId: string;
  id: number;
  idField: Buffer;
  first: number;
  /** Sequence of the next event to send. */
  next: number;
  /** Highest sequence acknowledged. */
  acked: number;
  /** performance.now() of each unacknowledged event's event_time, by sequence % window. */
  stamps: Float64Array;
  sendWindow: number;
  /** Whole DATA frames waiting for a send window. */
  queue: Buffer[];
  received: number;
  rx: Buffer | undefined;
  /** Paced: when event 0 of this run is due. */
  t0: number;
  blockedSince: number;
  draining: boolean;
  halfClosed: boolean;
  gotHeaders: boolean;
  trailers: Buffer | undefined;
  done: boolean;
  error: string | undefined;
}

/** grpc-status from a header block sent under a header table of size 0, or undefined if absent. */
function grpcStatusOf(block: Buffer): string | undefined {
  let at = 0;
  const int = (prefixBits: number) => {
    const max = (1 << prefixBits) - 1;
    let v = block[at++]! & max;
    if (v < max) return v;
    let shift = 0;
    let byte: number;
    do {
      byte = block[at++]!;
      v += (byte & 0x7f) * 2 ** shift;
      shift += 7;
    } while (byte & 0x80);
    return v;
  };
  const str = () => {
    const huffman = (block[at]! & 0x80) !== 0;
    const length = int(7);
    const bytes = block.subarray(at, at + length);
    at += length;
    return { huffman, bytes };
  };
  while (at < block.length) {
    const b = block[at]!;
    if (b & 0x80) {
      int(7); // indexed: the static table has no grpc-status
      continue;
    }
    if ((b & 0xe0) === 0x20) {
      int(5); // table size update
      continue;
    }
    const nameIndex = int(b & 0x40 ? 6 : 4);
    const name = nameIndex === 0 ? str() : undefined;
    const value = str();
    if (!name) continue;
    const isStatus = name.huffman
      ? name.bytes.equals(GRPC_STATUS_HUFFMAN)
      : name.bytes.toString("latin1") === "grpc-status";
    if (!isStatus) continue;
    if (!value.huffman) return value.bytes.toString("latin1");
    // Huffman: "0" is 00000 and its padding (the only one-byte code we need to tell apart).
    return value.bytes.length === 1 && value.bytes[0] === 0x07 ? "0" : `(Huffman ${value.bytes.toString("hex")})`;
  }
  return undefined;
}

/** Reads acked_sequence (field 1) from a StreamEventsResponse. */
function ackedSequenceOf(b: Buffer, at: number, end: number): number {
  const r = new BinaryReader(b.subarray(at, end));
  let acked = 0;
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    if (field === 1 && wire === WireType.Varint) acked = Number(r.uint64());
    else r.skip(wire);
  }
  return acked;
}

async function childMain(input: ChildInput): Promise<ChildOutput> {
  const cpu0 = process.cpuUsage();
  const window = input.window;
  const paced = input.ratePerDevice !== undefined && input.ratePerDevice > 0;
  const interval = paced ? 1000 / input.ratePerDevice! : 0;
  let wallOffset = Date.now() - performance.now();
  let t0 = 0;
  let end = Infinity;
  let latencies = new Float64Array(1 << 16);
  let latencyCount = 0;
  let acks = 0;
  let windowBlockedMs = 0;
  let windowBlocked = 0;
  let maxLagMs = 0;
  let flowControlWaits = 0;
  let endedAt = 0;

  const all: Stream[] = [];
  const connections: Conn[] = [];

  class Conn {
    socket!: net.Socket;
    streams: Stream[] = [];
    byId: (Stream | undefined)[] = [];
    sendWindow = 65_535;
    initialStreamWindow = 65_535;
    received = 0;
    out = Buffer.allocUnsafe(64 * 1024);
    at = 0;
    pending: Buffer | undefined;
    finished = false;
    resolveDone!: () => void;
    done = new Promise<void>((r) => (this.resolveDone = r));

    room(n: number) {
      if (this.at + n <= this.out.length) return;
      const grown = Buffer.allocUnsafe(Math.max(this.out.length * 2, this.at + n));
      this.out.copy(grown, 0, 0, this.at);
      this.out = grown;
    }
    push(b: Buffer) {
      this.room(b.length);
      this.at += b.copy(this.out, this.at);
    }
    flush() {
      if (this.at === 0 || this.finished) return;
      const chunk = Buffer.allocUnsafe(this.at);
      this.out.copy(chunk, 0, 0, this.at);
      this.at = 0;
      this.socket.write(chunk);
    }

    /** Encodes the stream's next event, due (and stamped) at `due` (performance.now() time). */
    emit(s: Stream, due: number) {
      this.room(9 + 5 + 100 + s.idField.length);
      const start = this.at;
      const end = writeStreamEventsRequest(this.out, start + 14, s.idField, s.next, wallOffset + due);
      const messageLength = end - start - 14;
      writeFrameHeader(this.out, start, 5 + messageLength, FRAME.DATA, 0, s.id);
      this.out[start + 9] = 0;
      this.out.writeUInt32BE(messageLength, start + 10);
      s.stamps[s.next % window] = due;
      s.next++;
      const size = 5 + messageLength;
      if (s.queue.length === 0 && this.sendWindow >= size && s.sendWindow >= size) {
        this.sendWindow -= size;
        s.sendWindow -= size;
        this.at = end;
      } else {
        s.queue.push(Buffer.from(this.out.subarray(start, end)));
        flowControlWaits++;
      }
    }
    /** Sends what the stream's queue may under the send windows. */
    unqueue(s: Stream) {
      while (s.queue.length > 0) {
        const f = s.queue[0]!;
        const size = f.length - 9;
        if (this.sendWindow < size || s.sendWindow < size) return;
        this.sendWindow -= size;
        s.sendWindow -= size;
        this.push(f);
        s.queue.shift();
      }
      if (s.draining) this.closeIfAcked(s);
    }

    /** Closed loop: up to `window` unacknowledged; paced: what is due, as far as `window` allows. */
    send(s: Stream, now: number) {
      if (s.done || s.draining) return;
      if (!paced) {
        while (s.next - 1 - s.acked < window) this.emit(s, now);
        return;
      }
      for (;;) {
        const due = s.t0 + (s.next - s.first) * interval;
        if (due > now || due >= end) break;
        if (s.next - 1 - s.acked >= window) {
          if (s.blockedSince < 0) {
            s.blockedSince = now;
            windowBlocked++;
          }
          return;
        }
        if (now - due > maxLagMs) maxLagMs = now - due;
        this.emit(s, due);
      }
      if (s.blockedSince >= 0) {
        windowBlockedMs += now - s.blockedSince;
        s.blockedSince = -1;
      }
    }

    closeIfAcked(s: Stream) {
      if (s.halfClosed || s.done || s.acked < s.next - 1 || s.queue.length > 0) return;
      s.halfClosed = true;
      this.room(9);
      writeFrameHeader(this.out, this.at, 0, FRAME.DATA, FLAG.END_STREAM, s.id);
      this.at += 9;
    }

    end(s: Stream, error: string | undefined, reset: boolean) {
      if (s.done) return;
      s.done = true;
      // After an earlier failure (no acknowledgement in time), how the stream ended too.
      if (error !== undefined) s.error = s.error ? `${s.error}, then ${error}` : error;
      if (s.blockedSince >= 0) {
        windowBlockedMs += performance.now() - s.blockedSince;
        s.blockedSince = -1;
      }
      if (reset) {
        const code = Buffer.alloc(4);
        code.writeUInt32BE(CANCEL);
        this.push(frame(FRAME.RST_STREAM, 0, s.id, code));
      }
      if (this.streams.every((x) => x.done)) this.finish();
    }
    finish() {
      if (this.finished) return;
      this.flush();
      this.finished = true;
      this.socket.end();
      this.resolveDone();
    }
    failAll(error: string) {
      for (const s of this.streams) if (!s.done) this.end(s, error, false);
      this.finish();
    }

    onAck(s: Stream, acked: number, now: number) {
      acks++;
      if (acked <= s.acked) return;
      if (acked > s.next - 1) {
        // The server held events from before firstSequence on: the caller's count is behind.
        this.end(s, "acknowledged beyond the last event sent (firstSequence behind the server's count)", true);
        return;
      }
      if (latencyCount + (acked - s.acked) > latencies.length) {
        const grown = new Float64Array(Math.max(latencies.length * 2, latencyCount + (acked - s.acked)));
        grown.set(latencies.subarray(0, latencyCount));
        latencies = grown;
      }
      for (let seq = s.acked + 1; seq <= acked; seq++) latencies[latencyCount++] = now - s.stamps[seq % window]!;
      s.acked = acked;
      if (s.draining) this.closeIfAcked(s);
      // Paced, the next tick sends what is due unless the window held it back: a socket write
      // per acknowledgement would cost more than the events it carries.
      else if (now < end && (!paced || s.blockedSince >= 0)) this.send(s, now);
    }

    onData(s: Stream, payload: Buffer, now: number) {
      let buf = s.rx ? Buffer.concat([s.rx, payload]) : payload;
      let at = 0;
      while (buf.length - at >= 5) {
        const length = buf.readUInt32BE(at + 1);
        if (buf.length - at < 5 + length) break;
        this.onAck(s, ackedSequenceOf(buf, at + 5, at + 5 + length), now);
        at += 5 + length;
      }
      s.rx = at < buf.length ? Buffer.from(buf.subarray(at)) : undefined;
    }

    onHeaders(s: Stream, flags: number, block: Buffer) {
      if (!(flags & FLAG.END_STREAM)) {
        s.gotHeaders = true;
        return;
      }
      const status = grpcStatusOf(block) ?? "unreadable";
      if (!s.halfClosed)
        this.end(
          s,
          `ended by the server before the half-close (${s.gotHeaders ? "" : "trailers-only, "}grpc-status ${status})`,
          true,
        );
      else this.end(s, status === "0" && !s.error ? undefined : `grpc-status ${status}`, false);
    }

    onFrame(type: number, flags: number, id: number, payload: Buffer, now: number) {
      switch (type) {
        case FRAME.SETTINGS:
          if (flags & FLAG.ACK) return;
          for (let i = 0; i + 6 <= payload.length; i += 6)
            if (payload.readUInt16BE(i) === 0x4) {
              const value = payload.readUInt32BE(i + 2);
              const delta = value - this.initialStreamWindow;
              this.initialStreamWindow = value;
              for (const s of this.streams) s.sendWindow += delta;
            }
          this.push(frame(FRAME.SETTINGS, FLAG.ACK, 0));
          for (const s of this.streams) this.unqueue(s);
          return;
        case FRAME.PING:
          if (!(flags & FLAG.ACK)) this.push(frame(FRAME.PING, FLAG.ACK, 0, payload));
          return;
        case FRAME.WINDOW_UPDATE: {
          const increment = payload.readUInt32BE(0) & MAX_WINDOW;
          if (id === 0) {
            this.sendWindow += increment;
            for (const s of this.streams) if (s.queue.length > 0) this.unqueue(s);
          } else {
            const s = this.byId[id];
            if (s) {
              s.sendWindow += increment;
              this.unqueue(s);
            }
          }
          return;
        }
        case FRAME.GOAWAY:
          this.failAll(`goaway (code ${payload.readUInt32BE(4)})`);
          return;
      }
      const s = this.byId[id];
      if (type === FRAME.DATA) {
        // Room for the server's answers: give back what it used once it is a large share.
        this.received += payload.length;
        if (this.received >= 1 << 30) {
          const inc = Buffer.alloc(4);
          inc.writeUInt32BE(this.received);
          this.push(frame(FRAME.WINDOW_UPDATE, 0, 0, inc));
          this.received = 0;
        }
        if (!s || s.done) return;
        s.received += payload.length;
        if (s.received >= 1 << 30) {
          const inc = Buffer.alloc(4);
          inc.writeUInt32BE(s.received);
          this.push(frame(FRAME.WINDOW_UPDATE, 0, s.id, inc));
          s.received = 0;
        }
        const data = flags & FLAG.PADDED ? payload.subarray(1, payload.length - payload[0]!) : payload;
        if (data.length > 0) this.onData(s, data, now);
        if (flags & FLAG.END_STREAM) this.end(s, "the server ended the stream without trailers", true);
        return;
      }
      if (!s || s.done) return;
      if (type === FRAME.RST_STREAM) {
        this.end(s, `reset by the server (code ${payload.readUInt32BE(0)})`, false);
        return;
      }
      if (type === FRAME.HEADERS) {
        let block = payload;
        let from = 0;
        let to = block.length;
        if (flags & FLAG.PADDED) {
          from = 1;
          to -= block[0]!;
        }
        if (flags & FLAG.PRIORITY) from += 5;
        block = block.subarray(from, to);
        if (flags & FLAG.END_HEADERS) this.onHeaders(s, flags, block);
        else s.trailers = Buffer.concat([Buffer.from([flags]), block]);
        return;
      }
      if (type === FRAME.CONTINUATION && s.trailers) {
        s.trailers = Buffer.concat([s.trailers, payload]);
        if (flags & FLAG.END_HEADERS) {
          const first = s.trailers;
          s.trailers = undefined;
          this.onHeaders(s, first[0]!, first.subarray(1));
        }
      }
    }
  }

  // Devices round robin over the connections; stream ids 1, 3, 5… on each.
  const n = input.connections;
  for (let c = 0; c < n; c++) connections.push(new Conn());
  input.devices.forEach((d, index) => {
    const conn = connections[index % n]!;
    const id = 1 + 2 * conn.streams.length;
    const s: Stream = {
      index,
      deviceId: d.deviceId,
      id,
      idField: deviceIdField(d.deviceId),
      first: d.firstSequence,
      next: d.firstSequence,
      acked: d.firstSequence - 1,
      stamps: new Float64Array(window),
      sendWindow: 65_535,
      queue: [],
      received: 0,
      rx: undefined,
      t0: 0,
      blockedSince: -1,
      draining: false,
      halfClosed: false,
      gotHeaders: false,
      trailers: undefined,
      done: false,
      error: undefined,
    };
    conn.streams.push(s);
    conn.byId[id] = s;
    all.push(s);
  });

  await Promise.all(
    connections.map(
      (conn) =>
        new Promise<void>((resolve, reject) => {
          const socket = net.connect(input.port, input.host);
          conn.socket = socket;
          socket.setNoDelay(true);
          socket.once("connect", resolve);
          socket.on("error", (err) => {
            if (t0 === 0) reject(err);
            else conn.failAll(`connection error: ${err.message}`);
          });
          socket.on("close", () => conn.failAll("connection closed"));
          socket.on("data", (chunk: Buffer) => {
            const now = performance.now();
            const buf = conn.pending ? Buffer.concat([conn.pending, chunk]) : chunk;
            let at = 0;
            while (buf.length - at >= 9) {
              const length = (buf[at]! << 16) | (buf[at + 1]! << 8) | buf[at + 2]!;
              if (buf.length - at < 9 + length) break;
              conn.onFrame(
                buf[at + 3]!,
                buf[at + 4]!,
                buf.readUInt32BE(at + 5) & MAX_WINDOW,
                buf.subarray(at + 9, at + 9 + length),
                now,
              );
              at += 9 + length;
            }
            conn.pending = at < buf.length ? Buffer.from(buf.subarray(at)) : undefined;
            conn.flush();
          });
        }),
    ),
  );

  // Preface; our settings: no dynamic table in the server's header blocks, no push, and stream
  // windows as large as allowed; the connection's window likewise.
  const settings = Buffer.from([0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 4, 0x7f, 0xff, 0xff, 0xff]);
  const connectionWindow = Buffer.alloc(4);
  connectionWindow.writeUInt32BE(MAX_WINDOW - 65_535);
  for (const conn of connections) {
    conn.push(Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1"));
    conn.push(frame(FRAME.SETTINGS, 0, 0, settings));
    conn.push(frame(FRAME.WINDOW_UPDATE, 0, 0, connectionWindow));
    for (const s of conn.streams)
      conn.push(frame(FRAME.HEADERS, FLAG.END_HEADERS, s.id, Buffer.from(input.devices[s.index]!.headerBlock, "hex")));
  }
  wallOffset = Date.now() - performance.now();
  t0 = performance.now();
  end = t0 + input.durationMs;
  const startedAt = wallOffset + t0;

  const drain = () => {
    for (const conn of connections) {
      for (const s of conn.streams) {
        if (s.done) continue;
        if (s.blockedSince >= 0) {
          windowBlockedMs += end - s.blockedSince;
          s.blockedSince = -1;
        }
        s.draining = true;
        conn.closeIfAcked(s);
      }
      conn.flush();
    }
  };
  let ticker: NodeJS.Timeout | undefined;
  if (paced) {
    all.forEach((s) => (s.t0 = t0 + (s.index / all.length) * interval));
    const tick = () => {
      const now = performance.now();
      let next = end;
      for (const conn of connections) {
        for (const s of conn.streams) {
          conn.send(s, now);
          // A device held back by its window is overdue: the next tick comes at TICK_MS.
          if (!s.done) next = Math.min(next, s.t0 + (s.next - s.first) * interval);
        }
        conn.flush();
      }
      if (now >= end) drain();
      else ticker = setTimeout(tick, Math.max(TICK_MS, next - performance.now()));
    };
    tick();
  } else {
    for (const conn of connections) {
      for (const s of conn.streams) conn.send(s, t0);
      conn.flush();
    }
  }
  const stopSending = paced ? undefined : setTimeout(drain, input.durationMs);
  const giveUp = setTimeout(() => {
    for (const conn of connections) {
      for (const s of conn.streams) {
        if (s.done || s.halfClosed) continue;
        s.error ??= `${s.next - 1 - s.acked} events unacknowledged ${input.drainTimeoutMs / 1000} s after the end`;
        if (s.queue.length > 0) conn.end(s, undefined, true);
        else {
          s.halfClosed = true;
          conn.room(9);
          writeFrameHeader(conn.out, conn.at, 0, FRAME.DATA, FLAG.END_STREAM, s.id);
          conn.at += 9;
        }
      }
      conn.flush();
    }
  }, input.durationMs + input.drainTimeoutMs);
  const noTrailers = setTimeout(
    () => {
      for (const conn of connections) {
        for (const s of conn.streams) if (!s.done) conn.end(s, "no trailers after the half-close", true);
        conn.finish();
      }
    },
    input.durationMs + input.drainTimeoutMs * 2,
  );

  await Promise.all(connections.map((c) => c.done));
  endedAt = performance.now();
  clearTimeout(ticker);
  clearTimeout(stopSending);
  clearTimeout(giveUp);
  clearTimeout(noTrailers);

  const sorted = latencies.subarray(0, latencyCount).sort();
  const pick = (p: number) =>
    latencyCount === 0 ? 0 : sorted[Math.min(latencyCount - 1, Math.floor((p / 100) * latencyCount))]!;
  const cpu = process.cpuUsage(cpu0);
  const devices = all.map((s) => ({
    deviceId: s.deviceId,
    sent: s.next - s.first,
    acked: s.acked - (s.first - 1),
    nextSequence: s.acked + 1,
    ...(s.error ? { error: s.error } : {}),
  }));
  return {
    devices,
    sent: devices.reduce((a, d) => a + d.sent, 0),
    acked: devices.reduce((a, d) => a + d.acked, 0),
    acks,
    startedAt,
    sendSeconds: input.durationMs / 1000,
    seconds: (endedAt - t0) / 1000,
    ackLatencyMs: { p50: pick(50), p99: pick(99), max: latencyCount === 0 ? 0 : sorted[latencyCount - 1]! },
    windowBlockedMs,
    windowBlocked,
    maxLagMs,
    flowControlWaits,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
  };
}

serveInOwnProcess("--bidi-load-child", childMain);
