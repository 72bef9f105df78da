import { createHash, createPrivateKey, generateKeyPairSync } from "node:crypto";
import { logger } from "../../platform/telemetry/logger.js";
import type { IdentityStore } from "./store.js";
import { ACCESS_TOKEN_TTL_SECONDS, type Jwk, type Jwks, type SigningKey } from "./tokens.js";

export interface KeyRingOptions {
  now: () => Date;
  /** Sign with a fresh key once the current one is this old; 0 keeps it until RotateSigningKey. */
  rotateAfterMs: number;
  /** How long another replica's rotation may go unseen here before the JWKS is read again. */
  refreshMs?: number;
}

/** Seconds a retired key stays published after its last token: the verifiers' clock tolerance. */
const PUBLISH_MARGIN_SECONDS = 60;
const PUBLISH_AFTER_RETIREMENT_MS = (ACCESS_TOKEN_TTL_SECONDS + PUBLISH_MARGIN_SECONDS) * 1000;

/** RFC 7638 thumbprint: the kid follows from the key itself, so every replica names it alike. */
function thumbprint(jwk: { crv: string; kty: string; x: string }): string {
  const canonical = JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x });
  return createHash("sha256").update(canonical).digest("base64url");
}

interface Loaded {
  at: number;
  signing: (SigningKey & { createdAt: Date }) | undefined;
  jwks: Jwks;
}

/**
 * The Ed25519 keys access tokens are signed with, persisted in the identity schema so every
 * replica and every restart signs and publishes the same set. The newest unretired key signs;
 * retired keys stay in the JWKS until every token they signed has expired.
 */
export class SigningKeyRing {
  private loaded: Loaded | undefined;
  private rotating: Promise<string> | undefined;
  private reading: Promise<Loaded> | undefined;

  constructor(
    private readonly store: IdentityStore,
    private readonly opts: KeyRingOptions,
  ) {}

  /** Loads the keys and makes sure one can sign. */
  async start(): Promise<void> {
    const l = await this.reload();
    if (!l.signing) await this.rotate();
  }

  async reload(): Promise<Loaded> {
    this.reading ??= this.read().finally(() => (this.reading = undefined));
    return this.reading;
  }

  private async read(): Promise<Loaded> {
    const now = this.opts.now();
    const rows = await this.store.signingKeys(new Date(now.getTime() - PUBLISH_AFTER_RETIREMENT_MS));
    const active = rows.find((r) => r.retired_at === null);
    const jwks: Jwks = {
      keys: rows.map((r) => (typeof r.public_jwk === "string" ? JSON.parse(r.public_jwk) : r.public_jwk) as Jwk),
    };
    const signing = active
      ? {
          kid: active.kid,
          privateKey: createPrivateKey({
            key: Buffer.from(active.private_pkcs8, "base64"),
            format: "der",
            type: "pkcs8",
          }),
          createdAt: new Date(active.created_at),
        }
      : undefined;
    this.loaded = { at: Date.now(), signing, jwks };
    return this.loaded;
  }

  private async fresh(): Promise<Loaded> {
    const l = this.loaded;
    if (l && Date.now() - l.at < (this.opts.refreshMs ?? 30_000)) return l;
    return this.reload();
  }

  /** The published keys: the one signing now and those retired recently enough to matter. */
  async jwks(): Promise<Jwks> {
    return (await this.fresh()).jwks;
  }

  /** The key to sign with now, rotating first when it has grown too old. */
  async signingKey(): Promise<SigningKey> {
    let l = await this.fresh();
    const age = l.signing ? this.opts.now().getTime() - l.signing.createdAt.getTime() : Infinity;
    if (!l.signing || (this.opts.rotateAfterMs > 0 && age >= this.opts.rotateAfterMs)) {
      await this.rotate();
      l = this.loaded!;
    }
    return l.signing!;
  }

  /** Generates a key, makes it the signing key and answers its kid. */
  rotate(): Promise<string> {
    this.rotating ??= this.generate().finally(() => (this.rotating = undefined));
    return this.rotating;
  }

  private async generate(): Promise<string> {
    const { publicKey, privateKey } = generateKeyPairSync("ed25519");
    const x = publicKey.export({ format: "jwk" }).x!;
    const kid = thumbprint({ crv: "Ed25519", kty: "OKP", x });
    const jwk: Jwk = { kty: "OKP", crv: "Ed25519", x, kid, alg: "EdDSA", use: "sig" };
    const now = this.opts.now();
    await this.store.addSigningKey(
      {
        kid,
        public_jwk: jwk,
        private_pkcs8: privateKey.export({ format: "der", type: "pkcs8" }).toString("base64"),
        created_at: now,
      },
      new Date(now.getTime() - PUBLISH_AFTER_RETIREMENT_MS),
    );
    logger.info("new signing key in use", { component: "identity", kid });
    await this.reload();
    return kid;
  }
}
