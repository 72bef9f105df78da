import { Code, ConnectError } from "@connectrpc/connect";
import { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { createMeshClient } from "../grpc/client.js";

export interface ServiceTokenOptions {
  /** host:port (or dns:///host:port) of the identity service. */
  identityTarget: string;
  /** The service's API key (`mmk_…`); a secret, never logged. */
  apiKey: string;
  /** What the key is configured as, for error messages (e.g. "PROCESSING_API_KEY"). */
  keyName?: string;
  /** Exchange again once the cached token has less than this left. Default 60 s. */
  renewBeforeMs?: number;
  now?: () => number;
  /** Deadline of the exchange call. Default 10 s. */
  timeoutMs?: number;
}

export interface ServiceToken {
  /** `{ authorization: "Bearer …" }` for a call's headers; exchanges the key when needed. */
  headers(): Promise<{ authorization: string }>;
  /** Drops the cached token, so the next call exchanges again (a callee refused it). */
  invalidate(): void;
  /**
   * Makes a call as this service. A callee that refuses the token (unauthenticated: it expired
   * early, or identity's keys rotated) gets one more try with a freshly exchanged one.
   */
  call<T>(call: (headers: { authorization: string }) => Promise<T>): Promise<T>;
  close(): void;
}

interface Cached {
  authorization: string;
  expiresAt: number;
}

/**
 * A mesh service calling others as itself: it holds an API key and trades it with identity's
 * ExchangeApiKey for a short-lived access token (15 min), which every service verifies locally
 * like a user's. The token is cached and exchanged again shortly before it expires; concurrent
 * callers share one exchange. Exchanging on demand rather than on a timer means an idle worker
 * makes no calls, and a failed exchange surfaces in the call that needed it, where it is retried.
 */
export function serviceToken(opts: ServiceTokenOptions): ServiceToken {
  const now = opts.now ?? Date.now;
  const renewBeforeMs = opts.renewBeforeMs ?? 60_000;
  const keyName = opts.keyName ?? "the service API key";
  const identity = createMeshClient(IdentityService, opts.identityTarget, {
    defaultTimeoutMs: opts.timeoutMs ?? 10_000,
  });
  let cached: Cached | undefined;
  let pending: Promise<Cached> | undefined;

  async function exchange(): Promise<Cached> {
    const asked = now();
    try {
      const res = await identity.exchangeApiKey({ apiKey: opts.apiKey });
      return { authorization: `Bearer ${res.accessToken}`, expiresAt: asked + res.expiresInSeconds * 1000 };
    } catch (err) {
      const ce = ConnectError.from(err);
      // Say which setting is wrong, never what it holds.
      if (ce.code === Code.Unauthenticated)
        throw new ConnectError(`identity refused ${keyName}: it is unknown or revoked`, Code.Unauthenticated);
      throw ce;
    }
  }

  async function headers(): Promise<{ authorization: string }> {
    if (cached && cached.expiresAt - now() > renewBeforeMs) return { authorization: cached.authorization };
    pending ??= exchange().finally(() => (pending = undefined));
    cached = await pending;
    return { authorization: cached.authorization };
  }

  return {
    headers,
    invalidate() {
      cached = undefined;
    },
    async call(call) {
      try {
        return await call(await headers());
      } catch (err) {
        if (ConnectError.from(err).code !== Code.Unauthenticated) throw err;
        cached = undefined;
        return call(await headers());
      }
    },
    close() {
      identity.close();
    },
  };
}
