import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from "node:crypto";

/**
 * Password hashing with scrypt from node:crypto. A stored hash names its own parameters
 * ("scrypt$ln=17,r=8,p=1$<salt>$<key>", base64url), so the cost can be raised later: old hashes
 * still verify, and needsRehash tells the caller to store a fresh hash at the next sign-in.
 */
export interface ScryptParams {
  /** log2 of N, the CPU/memory cost. */
  logN: number;
  r: number;
  p: number;
}

/** OWASP's Password Storage Cheat Sheet: scrypt with N = 2^17, r = 8, p = 1 at least. */
export const DEFAULT_PARAMS: ScryptParams = { logN: 17, r: 8, p: 1 };
const KEY_BYTES = 64;
const SALT_BYTES = 16;

/** The memory one derivation holds for its whole run: 128·N·r bytes, 128 MiB at the default. */
const memoryOf = (params: ScryptParams) => 128 * 2 ** params.logN * params.r;

// Derivations run on libuv's pool, four at a time by default: 512 MiB at N = 2^17, which is all of
// identity's memory limit in Kubernetes. A burst of sign-ins (wrong ones and unknown accounts cost
// the same) must wait its turn rather than get the process killed, so derivations share a budget
// of two default-cost ones. One always runs, whatever its cost, so a larger N still works.
const MEMORY_BUDGET = 2 * memoryOf(DEFAULT_PARAMS);
let memoryInUse = 0;
const waiting: Array<() => void> = [];

async function withMemory<T>(bytes: number, run: () => Promise<T>): Promise<T> {
  while (memoryInUse > 0 && memoryInUse + bytes > MEMORY_BUDGET) await new Promise<void>((r) => waiting.push(r));
  memoryInUse += bytes;
  try {
    return await run();
  } finally {
    memoryInUse -= bytes;
    // Everyone waiting checks again; those that still do not fit queue up anew, in order.
    for (const wake of waiting.splice(0)) wake();
  }
}

function derive(password: string, salt: Buffer, params: ScryptParams): Promise<Buffer> {
  const needed = memoryOf(params);
  const options: ScryptOptions = {
    N: 2 ** params.logN,
    r: params.r,
    p: params.p,
    // node refuses to allocate more than maxmem (32 MiB by default, and the check is strict), so
    // allow twice the requirement: 256 MiB at N = 2^17, r = 8.
    maxmem: 2 * needed,
  };
  return withMemory(
    needed,
    () =>
      new Promise<Buffer>((resolve, reject) =>
        scrypt(password.normalize("NFKC"), salt, KEY_BYTES, options, (err, key) => (err ? reject(err) : resolve(key))),
      ),
  );
}

export async function hashPassword(password: string, params: ScryptParams = DEFAULT_PARAMS): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const key = await derive(password, salt, params);
  return `scrypt$ln=${params.logN},r=${params.r},p=${params.p}$${salt.toString("base64url")}$${key.toString("base64url")}`;
}

interface Parsed {
  params: ScryptParams;
  salt: Buffer;
  key: Buffer;
}

function parse(encoded: string): Parsed | undefined {
  const m = /^scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9_-]+)\$([A-Za-z0-9_-]+)$/.exec(encoded);
  if (!m) return undefined;
  const params = { logN: Number(m[1]), r: Number(m[2]), p: Number(m[3]) };
  if (params.logN < 10 || params.logN > 22 || params.r < 1 || params.p < 1) return undefined;
  return { params, salt: Buffer.from(m[4]!, "base64url"), key: Buffer.from(m[5]!, "base64url") };
}

export async function verifyPassword(password: string, encoded: string): Promise<boolean> {
  const parsed = parse(encoded);
  if (!parsed) return false;
  const key = await derive(password, parsed.salt, parsed.params);
  return key.length === parsed.key.length && timingSafeEqual(key, parsed.key);
}

export function needsRehash(encoded: string, params: ScryptParams = DEFAULT_PARAMS): boolean {
  const parsed = parse(encoded);
  if (!parsed) return true;
  return (
    parsed.params.logN < params.logN ||
    parsed.params.r < params.r ||
    parsed.params.p < params.p ||
    parsed.key.length < KEY_BYTES
  );
}

/**
 * A hash of a password nobody has, verified when the account does not exist, so an unknown
 * login costs as much time as a wrong password and response times do not reveal who has an account.
 */
export function decoyHash(params: ScryptParams = DEFAULT_PARAMS): Promise<string> {
  return hashPassword(randomBytes(24).toString("base64url"), params);
}
