import http2 from "node:http2";

export interface RawGrpcReply {
  httpStatus: number;
  grpcStatus: string | undefined;
  grpcMessage: string | undefined;
  /** Every DATA byte of the response: the length-prefixed frames, as h2load counts them. */
  data: Buffer;
}

/**
 * Sends exactly the bytes the load generator will send, over a bare HTTP/2 session, and reports
 * what came back including trailers, which h2load cannot show. This is what proves the
 * pre-encoded request is a valid call before it is fired thousands of times.
 */
export function rawGrpcCall(origin: string, path: string, body: Buffer, timeoutMs = 5_000): Promise<RawGrpcReply> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(origin);
    const timer = setTimeout(() => {
      session.destroy();
      reject(new Error(`no answer from ${origin}${path} within ${timeoutMs} ms`));
    }, timeoutMs);
    const done = (err: Error | undefined, reply?: RawGrpcReply) => {
      clearTimeout(timer);
      session.close();
      if (err) reject(err);
      else resolve(reply!);
    };
    session.on("error", (err) => done(err));
    const auth = process.env.BENCH_AUTHORIZATION;
    const req = session.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
      ...(auth ? { authorization: auth } : {}),
    });
    let httpStatus = 0;
    let grpcStatus: string | undefined;
    let grpcMessage: string | undefined;
    const chunks: Buffer[] = [];
    const takeStatus = (h: http2.IncomingHttpHeaders) => {
      // A trailers-only response carries grpc-status in the headers block.
      if (h["grpc-status"] !== undefined) grpcStatus = String(h["grpc-status"]);
      if (h["grpc-message"] !== undefined) grpcMessage = decodeURIComponent(String(h["grpc-message"]));
    };
    req.on("response", (h) => {
      httpStatus = Number(h[":status"]);
      takeStatus(h);
    });
    req.on("trailers", takeStatus);
    req.on("data", (d: Buffer) => chunks.push(d));
    req.on("end", () => done(undefined, { httpStatus, grpcStatus, grpcMessage, data: Buffer.concat(chunks) }));
    req.on("error", (err) => done(err));
    req.end(body);
  });
}

/** The message of the single uncompressed frame in `data`, or an explanation of why there is none. */
export function singleFrame(data: Buffer): Uint8Array | string {
  if (data.length < 5) return `${data.length} bytes of DATA, not even a frame header`;
  if (data[0] !== 0) return `frame flags ${data[0]} (compressed or not a message)`;
  const len = data.readUInt32BE(1);
  if (data.length !== 5 + len) return `DATA is ${data.length} bytes but the frame says ${5 + len}`;
  return data.subarray(5);
}
