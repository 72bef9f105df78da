/**
 * What authentication costs, measured in one run: a password hash at the production scrypt
 * parameters (the cost of every Login), and verifying an access token the way the gateway and
 * every service do on every request (signature + claims, and the full bearer resolver with a
 * warm key-set cache). Writes bench/results/auth.md.
 *
 *   node --import tsx bench/auth.ts
 */
import { generateKeyPairSync } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { verifyAccessToken, type Jwks } from "../platform/auth/access-token.js";
import { bearerPrincipalResolver } from "../platform/auth/principal.js";
import { DEFAULT_PARAMS, hashPassword, verifyPassword } from "../services/identity/passwords.js";
import { newAccessClaims, signAccessToken } from "../services/identity/tokens.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

function stats(samples: number[]) {
  const s = [...samples].sort((a, b) => a - b);
  const at = (p: number) => s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
  return { mean: s.reduce((a, b) => a + b, 0) / s.length, p50: at(50), p99: at(99) };
}

async function main() {
  // Password hashing: sequential, as one Login costs one hash (and one verify).
  const hashes: number[] = [];
  let encoded = "";
  for (let i = 0; i < 12; i++) {
    const t = performance.now();
    encoded = await hashPassword(`correct horse battery ${i}`, DEFAULT_PARAMS);
    hashes.push(performance.now() - t);
  }
  const verifies: number[] = [];
  for (let i = 0; i < 12; i++) {
    const t = performance.now();
    await verifyPassword("correct horse battery 11", encoded);
    verifies.push(performance.now() - t);
  }

  // Token verification: a real Ed25519-signed token against a one-key set.
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const x = (publicKey.export({ format: "jwk" }) as { x: string }).x;
  const jwks: Jwks = { keys: [{ kty: "OKP", crv: "Ed25519", x, kid: "k1", alg: "EdDSA", use: "sig" }] };
  const token = signAccessToken(newAccessClaims({ sub: "u1", role: "doctor", kind: "user", sid: "s1" }, new Date()), { kid: "k1", privateKey });
  const N = 20_000;
  for (let i = 0; i < 2_000; i++) verifyAccessToken(token, jwks, { now: Date.now() }); // warm-up
  let t = performance.now();
  for (let i = 0; i < N; i++) {
    if (!verifyAccessToken(token, jwks, { now: Date.now() }).ok) throw new Error("token did not verify");
  }
  const verifyUs = ((performance.now() - t) * 1000) / N;
  const resolve = bearerPrincipalResolver({ current: async () => jwks, refresh: async () => jwks, close: () => undefined });
  const header = new Headers({ authorization: `Bearer ${token}` });
  for (let i = 0; i < 2_000; i++) await resolve(header);
  t = performance.now();
  for (let i = 0; i < N; i++) await resolve(header);
  const resolveUs = ((performance.now() - t) * 1000) / N;

  const h = stats(hashes);
  const v = stats(verifies);
  const md = [
    "# Authentication costs",
    "",
    `Run ${new Date().toISOString()} on ${os.cpus()[0]?.model ?? "?"} (nproc ${os.cpus().length}), Node ${process.version}, load average ${os.loadavg().map((l) => l.toFixed(2)).join(" ")}.`,
    "",
    "| what | figure |",
    "|---|---:|",
    `| scrypt hash, N=2^${DEFAULT_PARAMS.logN} r=${DEFAULT_PARAMS.r} p=${DEFAULT_PARAMS.p} (Register, password change) | mean ${h.mean.toFixed(1)} ms, p50 ${h.p50.toFixed(1)} ms, max ${Math.max(...hashes).toFixed(1)} ms |`,
    `| scrypt verify (every Login) | mean ${v.mean.toFixed(1)} ms, p50 ${v.p50.toFixed(1)} ms |`,
    `| access token verification (Ed25519 signature + claims) | ${verifyUs.toFixed(1)} µs per request |`,
    `| bearer resolver per request (header parse + verification, key set cached) | ${resolveUs.toFixed(1)} µs per request |`,
    "",
    "Every request through the gateway is verified twice (gateway, then the service): about",
    `${(2 * resolveUs).toFixed(0)} µs of CPU per call. One Login costs one scrypt verify on libuv's thread pool`,
    "(4 threads by default), so a core sustains roughly 1000 / verify-ms sign-ins per second.",
    "",
  ].join("\n");
  fs.mkdirSync(path.join(root, "bench/results"), { recursive: true });
  fs.writeFileSync(path.join(root, "bench/results/auth.md"), md);
  process.stdout.write(md);
}

void main();
