import type { Http2Server, IncomingHttpHeaders, ServerHttp2Stream } from "node:http2";
import { constants as h2 } from "node:http2";
import type { Server } from "@grpc/grpc-js";

/**
 * Ends a call whose single request message has not arrived within `ms`, when the client set no
 * deadline. grpc-js calls a unary or server-streaming handler only once the request stream has
 * ended, so the default unary deadline the adapter applies never starts for a client that sends
 * its headers and then nothing (or half a message): without this, grpc-js holds that call for as
 * long as the connection lives. A client with a deadline of its own is held to it by grpc-js.
 *
 * This watches the HTTP/2 streams themselves rather than wrapping every call in a grpc-js
 * ServerInterceptor, which cost every call several objects and closures. A new stream is only
 * noted (two array slots); every `resolutionMs` one sweep looks at the streams noted since the
 * last one, forgets those whose request has arrived or that are already over (nearly all of
 * them), and keeps the rest, which the sweeps answer once their bound has passed.
 */
export class RequestArrivalBound {
  /** Streams opened since the last sweep, each followed by its request headers. */
  private fresh: unknown[] = [];
  /** Streams still waiting for their request, each with the time its bound passes. */
  private readonly waiting = new Map<ServerHttp2Stream, number>();
  private ticking: NodeJS.Timeout | undefined;
  private readonly details: string;
  private readonly resolutionMs: number;
  private readonly note = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
    this.fresh.push(stream, headers);
    this.ticking ??= this.startTicking();
  };

  constructor(
    private readonly ms: number,
    /** Whether a method path's handler waits for the whole request (unary, server streaming). */
    private readonly waitsForRequest: (path: string) => boolean,
  ) {
    this.details = encodeURI(`the request did not arrive within the default deadline of ${ms} ms`);
    // Short enough that a finished stream is not kept reachable for long after its call.
    this.resolutionMs = Math.min(20, Math.max(1, Math.floor(ms / 10)));
  }

  /** Starts watching the streams of one of grpc-js's HTTP/2 servers. */
  watch(server: Http2Server): void {
    server.on("stream", this.note);
  }

  private startTicking(): NodeJS.Timeout {
    const t = setInterval(() => this.sweep(), this.resolutionMs);
    // A bound never keeps the process alive on its own.
    t.unref();
    return t;
  }

  private sweep(): void {
    const now = performance.now();
    const fresh = this.fresh;
    this.fresh = [];
    for (let i = 0; i < fresh.length; i += 2) {
      const stream = fresh[i] as ServerHttp2Stream;
      if (stream.readableEnded || stream.headersSent || stream.destroyed) continue;
      const headers = fresh[i + 1] as IncomingHttpHeaders;
      const path = headers[":path"];
      if (headers["grpc-timeout"] !== undefined || typeof path !== "string" || !this.waitsForRequest(path)) continue;
      // Noted up to one resolution ago: counting from now only makes the bound that much longer.
      this.waiting.set(stream, now + this.ms);
    }
    for (const [stream, at] of this.waiting) {
      if (stream.readableEnded || stream.headersSent || stream.destroyed) this.waiting.delete(stream);
      else if (at <= now) {
        this.waiting.delete(stream);
        // A trailers-only answer, as grpc-js itself sends a status before any response header.
        stream.respond(
          {
            [h2.HTTP2_HEADER_STATUS]: 200,
            [h2.HTTP2_HEADER_CONTENT_TYPE]: "application/grpc+proto",
            "grpc-status": "4",
            "grpc-message": this.details,
          },
          { endStream: true },
        );
      }
    }
    if (this.waiting.size === 0 && this.fresh.length === 0) {
      clearInterval(this.ticking);
      this.ticking = undefined;
    }
  }
}

/**
 * grpc-js's HTTP/2 servers (private to grpc-js: `Server.http2Servers`, filled by bindAsync).
 * Undefined if grpc-js no longer keeps them there; the caller then falls back to a
 * ServerInterceptor (adapter.ts requestArrivalBound).
 */
export function http2ServersOf(server: Server): (() => Iterable<Http2Server>) | undefined {
  const map = (server as unknown as { http2Servers?: unknown }).http2Servers;
  if (!(map instanceof Map)) return undefined;
  return () => [...(map as Map<Http2Server, unknown>).keys()].filter((s) => typeof s?.on === "function");
}
