import { Code, ConnectError } from "@connectrpc/connect";

/**
 * The wire pieces of gRPC-web and of watching gRPC frames pass by that only the gateway needs:
 * the 5-byte length prefix of each frame, the gRPC-web trailer frame and base64 for
 * grpc-web-text. What servers share with it (grpc-message, grpc-timeout) is platform/grpc/wire.ts.
 */

/**
 * Follows the length prefixes of a stream of gRPC frames as chunks pass by, without copying
 * them, and says when a frame announces more than `maxBytes`. Frames may be split anywhere,
 * prefix included.
 */
export class FrameWatcher {
  /** Bytes of the current frame's payload still to come; 0 means a prefix starts next. */
  private remaining = 0;
  /** Prefix bytes seen so far when a prefix is split across chunks (0..4). */
  private prefixSeen = 0;
  /** Only a prefix split across chunks needs a copy; most never are. */
  private prefix: Buffer | undefined;
  /** Whether any frame so far was flagged compressed. */
  compressed = false;

  constructor(private readonly maxBytes: number) {}

  /** The announced length of the first frame over the limit in `chunk`, or -1 when all fit. */
  oversized(chunk: Uint8Array): number {
    let at = 0;
    while (at < chunk.length) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, chunk.length - at);
        this.remaining -= take;
        at += take;
        continue;
      }
      const take = Math.min(5 - this.prefixSeen, chunk.length - at);
      if (this.prefixSeen === 0 && take === 5) {
        this.remaining = readLength(chunk, at);
        if (chunk[at]! & 0x01) this.compressed = true;
      } else {
        const prefix = (this.prefix ??= Buffer.alloc(5));
        for (let i = 0; i < take; i++) prefix[this.prefixSeen + i] = chunk[at + i]!;
        this.prefixSeen += take;
        if (this.prefixSeen < 5) return -1;
        this.prefixSeen = 0;
        this.remaining = prefix.readUInt32BE(1);
        if (prefix[0]! & 0x01) this.compressed = true;
      }
      at += take;
      if (this.remaining > this.maxBytes) return this.remaining;
    }
    return -1;
  }

  /** True when the stream so far ends on a frame boundary. */
  get atBoundary(): boolean {
    return this.remaining === 0 && this.prefixSeen === 0;
  }
}

function readLength(b: Uint8Array, at: number): number {
  return ((b[at + 1]! << 24) >>> 0) + (b[at + 2]! << 16) + (b[at + 3]! << 8) + b[at + 4]!;
}

/** The gRPC-web trailer frame (flag 0x80) carrying `trailers` as HTTP/1-style header lines. */
export function grpcWebTrailerFrame(trailers: Record<string, string>): Buffer {
  let text = "";
  for (const [k, v] of Object.entries(trailers)) text += `${k}: ${v}\r\n`;
  const body = Buffer.from(text, "latin1");
  const prefix = Buffer.alloc(5);
  prefix[0] = 0x80;
  prefix.writeUInt32BE(body.length, 1);
  return Buffer.concat([prefix, body]);
}

// ---- grpc-web-text ----

const notBase64 = () => new ConnectError("the grpc-web-text body is not base64", Code.InvalidArgument);

/**
 * Decodes a grpc-web-text body as it arrives: whole 4-character groups decode on their own, and a
 * padded group may sit in the middle (each message encoded on its own), where a plain decoder
 * would stop. Throws invalid_argument on anything that is not base64.
 */
export class Base64Stream {
  private pending = "";

  push(chunk: Uint8Array): Buffer {
    const text = this.pending + Buffer.from(chunk).toString("latin1").replace(/\s+/g, "");
    const whole = text.length - (text.length % 4);
    this.pending = text.slice(whole);
    return whole > 0 ? decodeBase64(text.slice(0, whole)) : Buffer.alloc(0);
  }

  /** Throws when the body ended inside a group. */
  end(): void {
    if (this.pending) throw notBase64();
  }
}

export function decodeBase64(text: string): Buffer {
  if (!/^([A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)*$/.test(text)) throw notBase64();
  const out: Buffer[] = [];
  let start = 0;
  for (let i = 3; i < text.length; i += 4) {
    if (text[i] !== "=") continue;
    out.push(Buffer.from(text.slice(start, i + 1), "base64"));
    start = i + 1;
  }
  if (start < text.length) out.push(Buffer.from(text.slice(start), "base64"));
  return out.length === 1 ? out[0]! : Buffer.concat(out);
}
