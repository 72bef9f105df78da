import type { IncomingHttpHeaders } from "node:http";
import { BlockList, isIP } from "node:net";
import { createContextValues, type ContextValues, type Interceptor } from "@connectrpc/connect";
import { CLIENT_ADDRESS_HEADER, vouchForAddress, type EdgeSecrets } from "../platform/auth/client-address.js";
import { clientAddressKey } from "../platform/grpc/interceptors/client-address.js";
import { peerKey } from "../platform/grpc/handler-context.js";
import { logger } from "../platform/telemetry/logger.js";
import { dropMeshOnlyHeaders } from "./edge-headers.js";

/**
 * Who a call through the gateway comes from, and how the gateway tells the services.
 *
 * The client is the socket's peer, unless that peer is a proxy the operator trusts
 * (GATEWAY_TRUSTED_PROXIES): then it is the nearest address in X-Forwarded-For that no trusted
 * proxy accounts for. Anyone can write X-Forwarded-For, so it is read only from trusted peers,
 * right to left: the right end was appended by the proxies we trust, the left end by whoever
 * the client was.
 */

export interface TrustedProxies {
  has(address: string): boolean;
}

/** Parses `10.0.0.0/8,192.0.2.1,fd00::/8` (addresses or CIDR prefixes); empty trusts no one. */
export function parseTrustedProxies(raw: string): TrustedProxies {
  const list = new BlockList();
  for (const entry of raw
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)) {
    const [address = "", bits, extra] = entry.split("/");
    const family = isIP(address);
    const max = family === 6 ? 128 : 32;
    const prefix = bits === undefined ? max : /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
    if (family === 0 || extra !== undefined || !(prefix >= 0 && prefix <= max)) {
      throw new Error(`"${entry}" is not an address or a CIDR prefix such as 10.0.0.0/8 or fd00::/8`);
    }
    list.addSubnet(address, prefix, family === 6 ? "ipv6" : "ipv4");
  }
  if (list.rules.length === 0) return { has: () => false };
  return {
    has: (address) => {
      const family = isIP(address);
      return family !== 0 && list.check(address, family === 6 ? "ipv6" : "ipv4");
    },
  };
}

/** An IPv4 client of a dual-stack socket appears as ::ffff:a.b.c.d; one client, one spelling. */
function canonical(address: string): string {
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(address);
  return mapped ? mapped[1]! : address;
}

// More hops than any real chain of proxies; the rest of a long header is the client's to write.
const MAX_HOPS = 16;

export function clientAddressOf(
  peer: string | undefined,
  forwardedFor: string | string[] | undefined,
  trusted: TrustedProxies,
): string | undefined {
  if (peer === undefined) return undefined;
  let client = canonical(peer);
  if (!trusted.has(client) || forwardedFor === undefined) return client;
  const hops = (Array.isArray(forwardedFor) ? forwardedFor.join(",") : forwardedFor)
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .slice(-MAX_HOPS);
  for (const hop of hops.reverse()) {
    // A trusted proxy writes an address; anything else was written further out, by no one we
    // trust, and the last address we could believe stands.
    if (isIP(hop) === 0) break;
    client = canonical(hop);
    if (!trusted.has(client)) break;
  }
  return client;
}

/** A call's starting context: the connection's peer, and the client that peer speaks for. */
export function addressValues(
  req: { socket?: { remoteAddress?: string }; headers: IncomingHttpHeaders },
  trusted: TrustedProxies,
): ContextValues {
  const peer = req.socket?.remoteAddress;
  return createContextValues()
    .set(peerKey, peer)
    .set(clientAddressKey, clientAddressOf(peer, req.headers["x-forwarded-for"], trusted));
}

/**
 * The gateway's side of the mesh-only header: whatever the caller sent under that name is
 * dropped, and, when the mesh has a secret, the gateway's signed statement of the client's
 * address is put in its place for the service to verify. It runs innermost, so only calls the
 * gateway admits are signed, and it changes only the headers the forwarder sends on.
 */
export function vouchForClient(secrets: EdgeSecrets | undefined, now: () => number = Date.now): Interceptor {
  if (!secrets) {
    logger.warn("MESH_EDGE_SECRET is unset: services behind the gateway see its address for every anonymous caller", {
      component: "gateway",
    });
  }
  return (next) => async (req) => {
    dropMeshOnlyHeaders(req.header);
    const address = req.contextValues.get(clientAddressKey);
    if (secrets && address) {
      const path = `/${req.service.typeName}/${req.method.name}`;
      req.header.set(CLIENT_ADDRESS_HEADER, vouchForAddress(secrets, address, path, now()));
    }
    return next(req);
  };
}
