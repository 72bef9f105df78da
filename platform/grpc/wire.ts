import zlib from "node:zlib";
import { Code, ConnectError } from "@connectrpc/connect";

/**
 * The pieces of the gRPC wire format that the mesh's own server transport (h2-transport.ts) and
 * the gateway's pass-through both speak: length-prefixed frames, grpc-timeout, grpc-message.
 */

/**
 * Cuts the request body of one call into gRPC messages as chunks arrive. A frame announcing more
 * than `maxBytes` is refused from its prefix, before its bytes are buffered; a frame flagged
 * compressed is inflated with the call's grpc-encoding (gzip and deflate, as grpc-js did), and
 * refused when the call names none or one the server does not know.
 */
export class FrameReader {
  /** Bytes received that do not yet make up a whole frame, kept as they came: copied once, when whole. */
  private chunks: Buffer[] = [];
  private have = 0;
  /** Bytes `chunks` must reach before anything can be read: a prefix (5), or the frame it announced. */
  private need = 5;

  constructor(
    private readonly maxBytes: number,
    /** The call's grpc-encoding header, lowercased; undefined or "identity" for none. */
    private readonly encoding: string | undefined,
  ) {}

  /** Every whole message completed by `chunk`; throws a ConnectError for a frame it refuses. */
  push(chunk: Buffer): Buffer[] {
    if (this.have === 0) return this.parse(chunk);
    this.chunks.push(chunk);
    this.have += chunk.length;
    if (this.have < this.need) return [];
    const whole = Buffer.concat(this.chunks, this.have);
    this.chunks = [];
    this.have = 0;
    return this.parse(whole);
  }

  private parse(buf: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let at = 0;
    this.need = 5;
    while (buf.length - at >= 5) {
      const length = buf.readUInt32BE(at + 1);
      if (length > this.maxBytes) throw tooLarge("request", length, this.maxBytes);
      if (buf.length - at - 5 < length) {
        this.need = 5 + length;
        break;
      }
      const payload = buf.subarray(at + 5, at + 5 + length);
      out.push(buf[at]! & 0x01 ? this.inflate(payload) : payload);
      at += 5 + length;
    }
    if (at < buf.length) {
      const rest = buf.subarray(at);
      this.chunks.push(rest);
      this.have = rest.length;
    }
    return out;
  }

  /** Throws when the body ended partway through a frame. */
  end(): void {
    if (this.have > 0) throw endedMidMessage();
  }

  private inflate(payload: Buffer): Buffer {
    const enc = this.encoding;
    if (enc === undefined || enc === "identity")
      throw new ConnectError("a message is flagged compressed but the call names no grpc-encoding", Code.Internal);
    if (enc !== "gzip" && enc !== "deflate")
      throw new ConnectError(
        `grpc-encoding ${enc} is not supported; use gzip, deflate or identity`,
        Code.Unimplemented,
      );
    try {
      // Bounded by the message limit, so a small bomb cannot inflate into gigabytes.
      const opts = { maxOutputLength: Math.max(1, this.maxBytes) };
      return enc === "gzip" ? zlib.gunzipSync(payload, opts) : zlib.inflateSync(payload, opts);
    } catch (err) {
      if ((err as { code?: string }).code === "ERR_BUFFER_TOO_LARGE")
        throw new ConnectError(
          `the request message inflates to more than the limit of ${this.maxBytes} bytes`,
          Code.ResourceExhausted,
        );
      throw new ConnectError(`a message flagged ${enc} could not be inflated`, Code.Internal);
    }
  }
}

export function endedMidMessage(): ConnectError {
  return new ConnectError("the request ended in the middle of a message", Code.InvalidArgument);
}

export function tooLarge(what: "request" | "response", bytes: number, max: number): ConnectError {
  return new ConnectError(
    `the ${what} message is ${bytes} bytes, more than the limit of ${max} bytes`,
    Code.ResourceExhausted,
  );
}

/** One uncompressed gRPC frame holding `message`. */
export function frameOf(message: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + message.byteLength);
  out[0] = 0;
  out.writeUInt32BE(message.byteLength, 1);
  out.set(message, 5);
  return out;
}

/**
 * grpc-message as the gRPC spec encodes it: printable ASCII other than "%" stays as it is,
 * everything else is percent-encoded UTF-8. (encodeURIComponent also escapes ";", "," and the
 * like, which grpc-js clients then show undecoded, as "%3B".)
 */
export function encodeGrpcMessage(message: string): string {
  if (/^[\x20-\x24\x26-\x7e]*$/.test(message)) return message;
  let out = "";
  for (const byte of Buffer.from(message, "utf8")) {
    out +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

export function decodeGrpcMessage(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

const grpcTimeoutUnits: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1_000, m: 1, u: 1e-3, n: 1e-6 };

/** A grpc-timeout header value in milliseconds, or undefined when it is not one (at most 8 digits and a unit). */
export function grpcTimeoutMs(value: string): number | undefined {
  const m = /^(\d{1,8})([HMSmun])$/.exec(value);
  return m ? Number(m[1]) * grpcTimeoutUnits[m[2]!]! : undefined;
}
