import { Metadata } from "@grpc/grpc-js";
import { decodeBinaryHeader, encodeBinaryHeader } from "@connectrpc/connect";

// Headers the transport owns; copying them between gRPC metadata and Fetch Headers would
// corrupt the framing or the status of the call.
const transportOwned = new Set([
  "content-type",
  "content-length",
  "te",
  "user-agent",
  "grpc-encoding",
  "grpc-accept-encoding",
  "grpc-timeout",
  "grpc-status",
  "grpc-message",
  "grpc-status-details-bin",
  "connection",
  "host",
  "accept-encoding",
  "connect-protocol-version",
  "connect-timeout-ms",
  "transfer-encoding",
]);

export function isTransportHeader(key: string): boolean {
  const k = key.toLowerCase();
  return (
    transportOwned.has(k) || k.startsWith(":") || k.startsWith("connect-content-") || k.startsWith("access-control-")
  );
}

/** gRPC metadata as Fetch Headers; binary values travel base64-encoded, as on the wire. */
export function metadataToHeaders(md: Metadata): Headers {
  const headers = new Headers();
  for (const [key, values] of Object.entries(md.getMap())) {
    if (isTransportHeader(key)) continue;
    const all = md.get(key);
    for (const v of all.length > 0 ? all : [values]) {
      headers.append(key, typeof v === "string" ? v : encodeBinaryHeader(new Uint8Array(v)));
    }
  }
  return headers;
}

/** Fetch Headers as gRPC metadata, skipping what the transport sets itself. */
export function headersToMetadata(headers: Headers, into = new Metadata()): Metadata {
  headers.forEach((value, key) => {
    if (isTransportHeader(key)) return;
    if (key.endsWith("-bin")) {
      for (const part of value.split(",")) into.add(key, Buffer.from(decodeBinaryHeader(part.trim())));
    } else {
      into.add(key, value);
    }
  });
  return into;
}
