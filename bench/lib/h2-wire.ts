/**
 * What the benches' hand-written HTTP/2 clients (h2-frames-load.ts, h2-bidi-load.ts) share: frame
 * types and flags (RFC 9113, section 6) and gRPC request header blocks in HPACK (RFC 7541).
 */

export const FRAME = {
  DATA: 0,
  HEADERS: 1,
  RST_STREAM: 3,
  SETTINGS: 4,
  PING: 6,
  GOAWAY: 7,
  WINDOW_UPDATE: 8,
  CONTINUATION: 9,
} as const;

/** ACK shares END_STREAM's bit: it is only used on SETTINGS and PING. */
export const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8, PRIORITY: 0x20 } as const;

/** HPACK integer with an n-bit prefix whose high bits are `first`. */
function hpackInt(value: number, prefixBits: number, first: number): number[] {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [first | value];
  const out = [first | max];
  let rest = value - max;
  while (rest >= 128) {
    out.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return out;
}

/** An HPACK string literal, not Huffman-coded. */
const hpackString = (s: string) => {
  const bytes = Buffer.from(s, "latin1");
  return [...hpackInt(bytes.length, 7, 0), ...bytes];
};

/**
 * A gRPC request's header block: indexed :method POST and :scheme http, then literals without
 * indexing (so no dynamic table state, and the same bytes for every call), by static-table name
 * where there is one (RFC 7541, appendix A). `extra`: lower-case names, e.g. authorization.
 */
export function grpcHeaderBlock(authority: string, path: string, extra: Record<string, string>): Buffer {
  const staticName: Record<string, number> = { ":authority": 1, ":path": 4, "content-type": 31, authorization: 23 };
  const literal = (name: string, value: string) =>
    staticName[name]
      ? [...hpackInt(staticName[name], 4, 0), ...hpackString(value)]
      : [0, ...hpackString(name), ...hpackString(value)];
  const fields = {
    ":path": path,
    ":authority": authority,
    "content-type": "application/grpc",
    te: "trailers",
    ...extra,
  };
  return Buffer.from([0x83, 0x86, ...Object.entries(fields).flatMap(([n, v]) => literal(n, v))]);
}
