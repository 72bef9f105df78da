import { createHash } from "node:crypto";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { RateClass } from "../../../gen/medmesh/access/v1/access_pb.js";
import { createRateLimiter, type BucketRule, type Decision, type RateLimiter } from "../../cache/rate-limiter.js";
import { env } from "../../config/env.js";
import { parseEdgeSecrets } from "../../auth/client-address.js";
import { logger } from "../../telemetry/logger.js";
import { resourceExhausted } from "../errors.js";
import { policyKey, principalKey, type Principal } from "./access.js";
import { clientAddressKey } from "./client-address.js";
import { peerKey } from "../handler-context.js";
import { enumNames } from "../enum-names.js";

const rateClassNames = enumNames<RateClass>(RateClass, "RateClass");

export type RateRules = Partial<Record<RateClass, BucketRule>>;

/**
 * Parses `read=200:100,write=50:20` (class=capacity:refill-per-second) into rules.
 * Throws a sentence naming the bad entry.
 */
function parseRateRules(spec: string): RateRules {
  const rules: RateRules = {};
  for (const entry of spec
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)) {
    const m = /^(read|write|auth|upload)=(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)$/.exec(entry);
    if (!m || Number(m[2]) < 1 || Number(m[3]) <= 0) {
      throw new Error(
        `rate rule "${entry}" must look like read=200:100 (class=capacity:refill-per-second, class one of read, write, auth, upload)`,
      );
    }
    const cls = { read: RateClass.READ, write: RateClass.WRITE, auth: RateClass.AUTH, upload: RateClass.UPLOAD }[
      m[1] as "read"
    ];
    rules[cls] = { capacity: Number(m[2]), refillPerSecond: Number(m[3]) };
  }
  return rules;
}

// The request fields that name the account (or credential) a sign-in style call is about.
const accountFields = ["login", "email", "username", "refresh_token", "api_key", "challenge_id", "token"];

/**
 * For credential calls (rate class AUTH), what the call is aimed at: the account named in the
 * request, or a digest of the secret presented. Guessing against one account from many
 * addresses then drains one bucket, as guessing from one address against many accounts does.
 */
function accountOf(schema: DescMessage, message: MessageShape<DescMessage>): string | undefined {
  for (const name of accountFields) {
    const field = schema.fields.find((f) => f.name === name && f.fieldKind === "scalar");
    const value = field ? (message as Record<string, unknown>)[field.localName] : undefined;
    if (typeof value === "string" && value !== "") {
      const v = value.trim().toLowerCase();
      // Secrets are hashed so they never sit in Redis or in memory as keys.
      return name === "login" || name === "email" || name === "username"
        ? `${name}:${v}`
        : `${name}:${createHash("sha256").update(v).digest("base64url").slice(0, 22)}`;
    }
  }
  return undefined;
}

const log = logger.child({ component: "rate-limit" });

/** The bucket of one caller's calls of a rate class: the signed-in principal's, else the client address's. */
export function callerBucket(
  rateClass: RateClass,
  principal: Principal | undefined,
  address: string | undefined,
): string {
  const who = principal ? `${principal.kind}:${principal.subject}` : `ip:${address ?? "unknown"}`;
  return `${rateClassNames.name(rateClass)}:${who}`;
}

/** The refusal of a call whose bucket `key` of `rateClass` is empty. */
export function refusal(rateClass: RateClass, key: string, decision: Decision): ConnectError {
  const name = rateClassNames.name(rateClass);
  const seconds = Math.max(1, Math.ceil(decision.retryAfterMs / 1000));
  const what = key.includes(":account:") ? `${name} calls for this account` : `${name} calls`;
  return resourceExhausted(`too many ${what}; try again in ${seconds} s`, decision.retryAfterMs);
}

/**
 * Draws one token from each bucket in turn and rejects with the refusal at the first empty one.
 * If the limiter itself fails (Redis down), credential checks fail closed and everything else
 * goes on: refusing every read because the limiter is down would be an outage of its own.
 * Shared with the gateway's pass-through, which limits calls it never decodes.
 */
export function drawTokens(
  limiter: RateLimiter,
  rule: BucketRule,
  rateClass: RateClass,
  buckets: readonly string[],
  from = 0,
): Promise<void> {
  const name = rateClassNames.name(rateClass);
  const key = buckets[from]!;
  return limiter.take(key, rule).then(
    (decision) => {
      if (!decision.allowed) throw refusal(rateClass, key, decision);
      if (from + 1 < buckets.length) return drawTokens(limiter, rule, rateClass, buckets, from + 1);
    },
    (err: unknown) => {
      log.warn("rate limiter unavailable", { error: (err as Error).message, rate_class: name });
      if (rateClass === RateClass.AUTH)
        throw new ConnectError("sign-in is briefly unavailable; try again shortly", Code.Unavailable);
    },
  );
}

/**
 * Draws one token per call from the bucket of the method's rate class, keyed by the signed-in
 * principal or, for anonymous callers, by the client's address (the one a trusted proxy or the
 * gateway vouched for, else the peer's); credential calls also draw from the
 * bucket of the account they name. Runs after the access interceptor,
 * which has put the policy (and the principal) into the context.
 */
export function rateLimitInterceptor(limiter: RateLimiter, rules: RateRules): Interceptor {
  return (next) => (req) => {
    const policy = req.contextValues.get(policyKey);
    const cls = policy?.rateClass ?? RateClass.UNSPECIFIED;
    const rule = rules[cls];
    if (!rule) return next(req);
    // Behind the gateway the peer is the gateway; the client it vouched for is who is calling.
    const address = req.contextValues.get(clientAddressKey) ?? req.contextValues.get(peerKey);
    const keys = [callerBucket(cls, req.contextValues.get(principalKey), address)];
    const account = cls === RateClass.AUTH && !req.stream ? accountOf(req.method.input, req.message) : undefined;
    if (account) keys.push(`${rateClassNames.name(cls)}:account:${account}`);
    return drawTokens(limiter, rule, cls, keys).then(() => next(req));
  };
}

/** The variables of every process that enforces rate classes (the gateway, identity). */
export const rateLimitSpec = {
  // Addresses are what anonymous callers are limited by, and behind the gateway only its signed
  // statement says what a client's address is: the gateway signs with it, services verify.
  MESH_EDGE_SECRET: env.productionSecret(
    "shared secret the gateway signs client addresses with for the services (several, comma-separated, during a rotation)",
    parseEdgeSecrets,
  ),
  REDIS_URL: env.url("Redis for rate limits shared by every replica; unset keeps them in process", [
    "redis:",
    "rediss:",
  ]),
  RATE_LIMITS: env.parsed(
    "token buckets per rate class, class=capacity:refill-per-second",
    "read=200:100,write=60:20,auth=10:0.2,upload=20:5",
    parseRateRules,
  ),
};

/** The limiter and rules those variables describe, ready for meshInterceptors({ rateLimit }). */
export function rateLimiting(config: { REDIS_URL?: string; RATE_LIMITS: RateRules }): {
  limiter: RateLimiter;
  rules: RateRules;
} {
  return { limiter: createRateLimiter(config.REDIS_URL), rules: config.RATE_LIMITS };
}
