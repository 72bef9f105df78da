import { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { createMeshClient } from "../grpc/client.js";
import type { Jwks } from "./access-token.js";

export interface KeySet {
  /** The cached key set, fetched on first use. */
  current(): Promise<Jwks>;
  /** The key set `current` would answer at once, if it holds a fresh one; undefined means ask `current`. */
  held?(): Jwks | undefined;
  /**
   * Fetches again, for a token whose key we have not seen; at most once per interval, so a
   * stream of tokens with made-up kids cannot turn into a stream of calls to identity.
   */
  refresh(): Promise<Jwks>;
  close(): void;
}

/** identity's signing keys (GetJwks), cached for `ttlMs` and refreshed on an unknown kid. */
export function identityKeySet(target: string, opts: { ttlMs?: number; minRefreshMs?: number } = {}): KeySet {
  const ttl = opts.ttlMs ?? 5 * 60_000;
  const minRefresh = opts.minRefreshMs ?? 5_000;
  const client = createMeshClient(IdentityService, target);
  let cached: { jwks: Jwks; at: number } | undefined;
  let inflight: Promise<Jwks> | undefined;
  const fetchNow = () =>
    (inflight ??= client
      .getJwks({}, { timeoutMs: 3_000 })
      .then((res) => {
        const jwks = JSON.parse(res.jwksJson) as Jwks;
        cached = { jwks, at: Date.now() };
        return jwks;
      })
      .finally(() => (inflight = undefined)));
  return {
    async current() {
      if (cached && Date.now() - cached.at < ttl) return cached.jwks;
      return fetchNow();
    },
    held: () => (cached && Date.now() - cached.at < ttl ? cached.jwks : undefined),
    async refresh() {
      if (cached && Date.now() - cached.at < minRefresh) return cached.jwks;
      return fetchNow();
    },
    close: () => client.close(),
  };
}
