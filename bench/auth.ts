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
import { create, toBinary } from "@bufbuild/protobuf";
import { Role } from "../gen/medmesh/access/v1/access_pb.js";
import { DocumentService, DocumentType, GetDocumentRequestSchema } from "../gen/medmesh/documents/v1/documents_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import type { PrincipalResolver } from "../platform/grpc/interceptors/access.js";
import { startDocuments } from "../services/documents/main.js";
import { startGateway } from "../gateway/main.js";
import { startTestIdentity } from "../test/support/identity.js";
import { grpcFrame, runH2load, which, type ToolResult } from "./lib/tools.js";
import { rawGrpcCall } from "./lib/verify.js";

const quiet = { LOG_LEVEL: "error", GATEWAY_PORT: "0", DOCUMENTS_PORT: "0", MEDMESH_DATA_DIR: "memory://" };

/**
 * GetDocument through gateway and documents, both in this process, with tokens verified as in
 * production or with verification replaced by a fixed caller: the same code path but for the
 * two verifications, measured one after the other in one run with the same load.
 */
async function throughput(verify: boolean, dir: string): Promise<ToolResult> {
  const identity = await startTestIdentity();
  const token = await identity.token("doctor");
  const doctor = await identity.userId("doctor");
  const trusted: PrincipalResolver | undefined = verify
    ? undefined
    : async () => ({ subject: doctor, role: Role.DOCTOR, kind: "user" });
  const docs = await startDocuments({ ...quiet, IDENTITY_TARGET: identity.target }, { resolvePrincipal: trusted });
  const gw = await startGateway(
    {
      ...quiet,
      IDENTITY_TARGET: identity.target,
      DOCUMENTS_TARGET: `127.0.0.1:${docs.port}`,
      RATE_LIMITS: "read=100000000:100000000",
    },
    { services: [DocumentService], resolvePrincipal: trusted },
  );
  try {
    const client = createMeshClient(DocumentService, `127.0.0.1:${docs.port}`, {
      headers: { authorization: `Bearer ${token}` },
    });
    const { document } = await client.createDocument({
      document: { title: "bench", documentType: DocumentType.REVIEW },
    });
    client.close();
    if (verify) process.env.BENCH_AUTHORIZATION = `Bearer ${token}`;
    else delete process.env.BENCH_AUTHORIZATION;
    const body = grpcFrame(toBinary(GetDocumentRequestSchema, create(GetDocumentRequestSchema, { id: document!.id })));
    const bodyFile = path.join(dir, `get-${verify}.grpc`);
    fs.writeFileSync(bodyFile, body);
    const origin = `http://127.0.0.1:${gw.port}`;
    const probe = await rawGrpcCall(origin, "/medmesh.documents.v1.DocumentService/GetDocument", body);
    if (probe.grpcStatus !== "0") throw new Error(`probe failed: ${probe.grpcStatus} ${probe.grpcMessage}`);
    return await runH2load(
      {
        url: origin + "/medmesh.documents.v1.DocumentService/GetDocument",
        bodyFile,
        clients: 1,
        streamsPerClient: 64,
        seconds: 10,
        okResponseDataBytes: probe.data.length,
        logFile: path.join(dir, `h2load-${verify}.log`),
      },
      3,
    );
  } finally {
    await gw.stop();
    await docs.stop();
    await identity.stop();
  }
}

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
  const token = signAccessToken(newAccessClaims({ sub: "u1", role: "doctor", kind: "user", sid: "s1" }, new Date()), {
    kid: "k1",
    privateKey,
  });
  const N = 20_000;
  for (let i = 0; i < 2_000; i++) verifyAccessToken(token, jwks, { now: Date.now() }); // warm-up
  let t = performance.now();
  for (let i = 0; i < N; i++) {
    if (!verifyAccessToken(token, jwks, { now: Date.now() }).ok) throw new Error("token did not verify");
  }
  const verifyUs = ((performance.now() - t) * 1000) / N;
  const resolve = bearerPrincipalResolver({
    current: async () => jwks,
    refresh: async () => jwks,
    close: () => undefined,
  });
  const header = new Headers({ authorization: `Bearer ${token}` });
  for (let i = 0; i < 2_000; i++) await resolve(header);
  t = performance.now();
  for (let i = 0; i < N; i++) await resolve(header);
  const resolveUs = ((performance.now() - t) * 1000) / N;

  let side = "";
  if (which("h2load")) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "medmesh-auth-bench-"));
    const verified = await throughput(true, dir);
    const trusted = await throughput(false, dir);
    const rps = (r: ToolResult) => r.ok / r.durationSeconds;
    const fails = (r: ToolResult) => Object.values(r.failures).reduce((a, b) => a + b, 0);
    side = [
      "GetDocument through the gateway, gateway + documents + identity in this one process, h2load 1 connection x 64 streams,",
      "3 s warm-up then 10 s, one after the other in this run:",
      "",
      "| caller check at gateway and service | req/s | p50 ms | p99 ms | failed |",
      "|---|---:|---:|---:|---:|",
      `| bearer token verified (production) | ${rps(verified).toFixed(0)} | ${verified.p50Ms.toFixed(1)} | ${verified.p99Ms.toFixed(1)} | ${fails(verified)} |`,
      `| verification replaced by a fixed caller | ${rps(trusted).toFixed(0)} | ${trusted.p50Ms.toFixed(1)} | ${trusted.p99Ms.toFixed(1)} | ${fails(trusted)} |`,
      "",
      `Authenticated / unauthenticated throughput: ${(rps(verified) / rps(trusted)).toFixed(2)}.`,
      "",
    ].join("\n");
  } else {
    side = "h2load not found (apt-get install nghttp2-client): the throughput comparison was skipped.\n";
  }

  const h = stats(hashes);
  const v = stats(verifies);
  const md = [
    "# Authentication costs",
    "",
    `Run ${new Date().toISOString()} on ${os.cpus()[0]?.model ?? "?"} (nproc ${os.cpus().length}), Node ${process.version}, load average ${os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}.`,
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
    side,
  ].join("\n");
  fs.mkdirSync(path.join(root, "bench/results"), { recursive: true });
  fs.writeFileSync(path.join(root, "bench/results/auth.md"), md);
  process.stdout.write(md);
}

void main().then(() => process.exit(0));
