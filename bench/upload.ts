/**
 * Streaming uploads, side by side in one run: `npm run bench:upload` (node --import tsx
 * bench/upload.ts). Starts meshes of its own (the `npm start` launcher) on free loopback ports in a
 * temporary data dir with UPLOAD_MAX_BYTES raised, signs in, and:
 *
 * 1. uploads the same file (BENCH_UPLOAD_MIB, default 256 MiB: `%PDF-1.7\n` then random bytes) in
 *    chunks of BENCH_UPLOAD_CHUNK_KIB (1024) with the Upload client stream directly to documents,
 *    through the gateway (gRPC over h2c), and as a bare HTTP/2 POST to a sink that discards it or
 *    writes it to a file with fsync; BENCH_REPEAT (3) rounds, rows interleaved, median and spread;
 * 2. uploads BENCH_RSS_MIB (1024; 0 skips) directly and through the gateway, each on a fresh mesh,
 *    sampling the RSS of documents, the gateway and this client every BENCH_RSS_INTERVAL_MS (100);
 * 3. POSTs BENCH_LISTENER_MIB (64; 0 skips) raw to the sink behind the gateway's own listener
 *    (gateway/dual-protocol-server.ts) and behind a plain http2.createServer, to separate the
 *    listener from gRPC and the forwarding.
 *
 * Every upload is checked: the SHA-256 the server reports is the file's and the version exists.
 * BENCH_WARMUP_MIB (32) is uploaded once per path first, untimed; BENCH_QUIET_WAIT_SECONDS (30)
 * bounds the wait for an idle machine before each upload. Writes bench/results/upload.md and
 * removes the data dir (blobs included) at the end.
 */
import { spawnSync } from "node:child_process";
import { createHash, randomFillSync } from "node:crypto";
import fs from "node:fs";
import http2 from "node:http2";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  DocumentService,
  DocumentType,
  type UploadRequestSchema,
  type UploadResponse,
} from "../gen/medmesh/documents/v1/documents_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { postChunks, startSink, type Sink } from "./lib/h2-sink.js";
import { intFromEnv } from "./lib/env.js";
import { fmt, mib, say } from "./lib/format.js";
import { signInBenchAdmin } from "./lib/sign-in.js";
import {
  cpuSecondsOf,
  machineCpuSeconds,
  memoryOf,
  QUIET_CORES,
  startMesh,
  tail,
  waitForQuiet,
  type Mesh,
} from "./lib/mesh.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const MiB = 1024 * 1024;

const UPLOAD_MIB = intFromEnv("BENCH_UPLOAD_MIB", 256, 1, 16_384);
const REPEAT = intFromEnv("BENCH_REPEAT", 3, 1, 20);
// The contract caps a chunk at 1 MiB.
const CHUNK_BYTES = intFromEnv("BENCH_UPLOAD_CHUNK_KIB", 1024, 1, 1024) * 1024;
let RSS_MIB = intFromEnv("BENCH_RSS_MIB", 1024, 0, 16_384);
const RSS_INTERVAL_MS = intFromEnv("BENCH_RSS_INTERVAL_MS", 100, 10, 5_000);
const WARMUP_MIB = intFromEnv("BENCH_WARMUP_MIB", 32, 0, 1024);
// Modest on purpose: a listener that leaves Nagle on (as the gateway's did before 6217c44) stalls
// on every flow-control round trip and runs at about 1 MB/s, a minute per 64 MiB.
const LISTENER_MIB = intFromEnv("BENCH_LISTENER_MIB", 64, 0, 1024);
const QUIET_WAIT_SECONDS = intFromEnv("BENCH_QUIET_WAIT_SECONDS", 30, 0, 600);
// Part 1 sends a file with no repeats up to this size; part 2 cycles a small pool instead, so
// that what the client holds is visibly not the file.
const THROUGHPUT_POOL_BYTES = 256 * MiB;
const RSS_POOL_BYTES = 16 * MiB;

/**
 * A file that exists only as a recipe: a pool of random bytes, cycled chunk by chunk, behind a
 * first chunk that starts like a PDF. Iterating it hands out views of the pool, so a 1 GiB file
 * costs the client its pool, not 1 GiB, and every pass yields the same bytes (its SHA-256 is
 * known before it is sent, for the upload header).
 */
class SyntheticFile {
  readonly sha256: string;
  private readonly first: Buffer;
  private readonly pool: Buffer[];

  constructor(
    readonly bytes: number,
    readonly chunkBytes: number,
    poolBytes: number,
  ) {
    const poolChunks = Math.max(1, Math.ceil(Math.min(bytes, poolBytes) / chunkBytes));
    this.pool = Array.from({ length: poolChunks }, () => randomFillSync(Buffer.allocUnsafe(chunkBytes)));
    this.first = Buffer.from(this.pool[0]!);
    this.first.write("%PDF-1.7\n", 0, "latin1");
    const hash = createHash("sha256");
    for (const c of this.chunks()) hash.update(c);
    this.sha256 = hash.digest("hex");
  }

  *chunks(): Generator<Buffer> {
    let sent = 0;
    for (let i = 0; sent < this.bytes; i++) {
      const whole = i === 0 ? this.first : this.pool[i % this.pool.length]!;
      const c = whole.subarray(0, Math.min(this.chunkBytes, this.bytes - sent));
      sent += c.length;
      yield c;
    }
  }

  poolBytes(): number {
    return this.pool.length * this.chunkBytes + this.first.length;
  }
}

async function* uploadMessages(
  file: SyntheticFile,
  title: string,
): AsyncGenerator<MessageInitShape<typeof UploadRequestSchema>> {
  yield {
    part: {
      case: "header",
      value: {
        document: { title, documentType: DocumentType.RESEARCH_PAPER, metadata: { source: "bench/upload.ts" } },
        filename: "bench-upload.pdf",
        declaredMimeType: "application/pdf",
        sha256: file.sha256,
      },
    },
  };
  for (const c of file.chunks()) yield { part: { case: "chunk", value: c } };
}

type DocumentsClient = Client<typeof DocumentService>;

interface Path {
  key: string;
  label: string;
  client: string;
  /** Sends the file once; resolves when the server has answered, and says what proves it landed. */
  send(file: SyntheticFile, title: string): Promise<{ landed: () => Promise<string> }>;
}

interface Sample {
  seconds: number;
  /** CPU seconds by process name for this upload. */
  cpu: Record<string, number>;
  /** Cores busy on the machine beyond the processes accounted for. */
  otherCores: number;
}

interface RowResult {
  path: Path;
  samples: Sample[];
  failures: string[];
}

async function quiet() {
  if (QUIET_WAIT_SECONDS === 0) return;
  const { busyCores } = await waitForQuiet(QUIET_WAIT_SECONDS);
  if (busyCores >= QUIET_CORES)
    say(`  machine still busy (${busyCores.toFixed(2)} cores) after ${QUIET_WAIT_SECONDS}s; measuring anyway`);
}

function selfCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** One timed upload with the CPU every known process spent on it. */
async function timedUpload(
  p: Path,
  file: SyntheticFile,
  title: string,
  pids: Record<string, number>,
): Promise<Sample & { landed: () => Promise<string> }> {
  const cpu0 = Object.fromEntries(Object.entries(pids).map(([n, pid]) => [n, cpuSecondsOf(pid)]));
  const self0 = selfCpuSeconds();
  const machine0 = machineCpuSeconds();
  const t0 = performance.now();
  const { landed } = await p.send(file, title);
  const seconds = (performance.now() - t0) / 1000;
  const machine1 = machineCpuSeconds();
  const cpu: Record<string, number> = { client: selfCpuSeconds() - self0 };
  for (const [n, pid] of Object.entries(pids)) cpu[n] = cpuSecondsOf(pid) - cpu0[n]!;
  const accounted = Object.values(cpu).reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
  return { seconds, cpu, otherCores: (machine1.busy - machine0.busy - accounted) / seconds, landed };
}

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Resets VmHWM so it reads as the peak since now (Linux: "5" to clear_refs); false where refused. */
function resetPeak(pid: number | "self"): boolean {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

interface RssRun {
  path: Path;
  seconds: number;
  samples: number;
  /** Longest gap between two samples: the sampler shares the client's event loop. */
  maxGapMs: number;
  perProcess: Record<string, { baseline: number; peak: number; hwm: number; after: number }>;
  verified: string;
}

async function rssRun(p: Path, file: SyntheticFile, watch: Record<string, number | "self">): Promise<RssRun> {
  const rssOf = (pid: number | "self") =>
    pid === "self" ? process.memoryUsage.rss() : (memoryOf(pid)?.rssBytes ?? NaN);
  const read = () => Object.fromEntries(Object.entries(watch).map(([n, pid]) => [n, rssOf(pid)]));
  // A second of samples at rest, so one GC or allocation spike does not set the baseline.
  const rest: Record<string, number[]> = Object.fromEntries(Object.keys(watch).map((n) => [n, []]));
  for (let i = 0; i < 10; i++) {
    for (const [n, v] of Object.entries(read())) rest[n]!.push(v);
    await new Promise((r) => setTimeout(r, 100));
  }
  const hwmReset = Object.fromEntries(Object.entries(watch).map(([n, pid]) => [n, resetPeak(pid)]));
  const peak: Record<string, number> = Object.fromEntries(Object.keys(watch).map((n) => [n, 0]));
  let samples = 0;
  let last = performance.now();
  let maxGapMs = 0;
  const sample = () => {
    const now = performance.now();
    maxGapMs = Math.max(maxGapMs, now - last);
    last = now;
    samples++;
    for (const [n, v] of Object.entries(read())) peak[n] = Math.max(peak[n]!, v);
  };
  sample();
  const timer = setInterval(sample, RSS_INTERVAL_MS);
  const t0 = performance.now();
  let landed: () => Promise<string>;
  try {
    ({ landed } = await p.send(file, `RSS run, ${p.key}`));
  } finally {
    clearInterval(timer);
  }
  const seconds = (performance.now() - t0) / 1000;
  sample();
  const hwm = Object.fromEntries(
    Object.entries(watch).map(([n, pid]) => {
      const m = pid === "self" ? memoryOf(process.pid) : memoryOf(pid);
      return [n, hwmReset[n] ? (m?.peakBytes ?? NaN) : NaN];
    }),
  );
  await new Promise((r) => setTimeout(r, 1_000));
  const after = read();
  const verified = await landed();
  return {
    path: p,
    seconds,
    samples,
    maxGapMs,
    verified,
    perProcess: Object.fromEntries(
      Object.keys(watch).map((n) => [
        n,
        { baseline: median(rest[n]!), peak: peak[n]!, hwm: hwm[n]!, after: after[n]! },
      ]),
    ),
  };
}

/** REPEAT rounds, each row once per round, so a slow patch of the machine hits every row alike. */
async function measureRounds(rows: RowResult[], file: SyntheticFile, stage: Stage) {
  for (let round = 1; round <= REPEAT; round++) {
    for (const row of rows) {
      const damage = stage.mesh.damage();
      if (damage) throw new Error(`the mesh is no longer whole: ${damage}`);
      await stage.auth.header();
      await quiet();
      try {
        const s = await timedUpload(row.path, file, `round ${round} via ${row.path.key}`, stage.pids);
        const verified = await s.landed();
        row.samples.push(s);
        say(
          `round ${round}/${REPEAT} ${row.path.key}: ${(file.bytes / 1e6 / s.seconds).toFixed(1)} MB/s in ${s.seconds.toFixed(2)} s; ${verified}`,
        );
      } catch (err) {
        row.failures.push((err as Error).message);
        say(`round ${round}/${REPEAT} ${row.path.key}: FAILED ${(err as Error).message}`);
      }
    }
  }
}

/**
 * The bootstrap admin's access token, signed in again when it gets old: the gateway rows of a
 * full run take longer than a token lives.
 */
class Auth {
  private token = "";
  private at = 0;

  constructor(private readonly gateway: string) {}

  async header(): Promise<{ authorization: string }> {
    // Well inside the token's lifetime, and checked only between uploads.
    if (this.token === "" || performance.now() - this.at > 3 * 60_000) {
      this.token = await signInBenchAdmin(this.gateway);
      this.at = performance.now();
    }
    return { authorization: `Bearer ${this.token}` };
  }
}

/** Reads that only check an upload are retried on Internal, and each retry is reported. */
const readRetries: string[] = [];
async function checkRead<T>(what: string, read: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await read();
    } catch (err) {
      if (!(err instanceof ConnectError) || err.code !== Code.Internal || attempt === 3) throw err;
      readRetries.push(`${what}: ${err.message}`);
      say(`  ${what} failed (${err.message}); retrying the check`);
    }
  }
}

function freeBytes(dir: string): number {
  const s = fs.statfsSync(dir);
  return s.bavail * s.bsize;
}

/** One mesh and the clients of every path into it. */
interface Stage {
  mesh: Mesh;
  auth: Auth;
  paths: Path[];
  listenerPaths: Path[];
  /** Every process whose CPU an upload is charged with: the mesh's and the sink's. */
  pids: Record<string, number>;
  close(): Promise<void>;
}

let stageCount = 0;

/**
 * Starts a mesh of its own under `dataDir`. The memory runs each get a fresh one: after an upload
 * the documents process keeps its RSS until V8 next collects, so a second run on the same mesh
 * would start from the first one's peak.
 */
async function openStage(
  dataDir: string,
  sink: Sink,
  uploadMax: string,
  sinkSession: http2.ClientHttp2Session,
  dualSession: () => http2.ClientHttp2Session,
): Promise<Stage> {
  const meshDir = path.join(dataDir, `mesh-${++stageCount}`);
  fs.mkdirSync(meshDir);
  say(`starting a mesh (data dir ${meshDir}, UPLOAD_MAX_BYTES=${uploadMax})`);
  const mesh = await startMesh({
    root,
    dataDir: meshDir,
    required: ["gateway", "documents"],
    timeoutMs: 180_000,
    env: {
      UPLOAD_MAX_BYTES: uploadMax,
      // Where the launcher runs the processing worker it would read and analyse every upload
      // below its limit (the warm-ups, a small BENCH_UPLOAD_MIB) while the next one is timed;
      // with a 1-byte limit it records each as too_large without reading. bench/pipeline.ts
      // measures processing.
      PROCESSING_MAX_BYTES: "1",
    },
  });
  const documentsTarget = mesh.endpoints.documents!.replace(/^grpc:\/\//, "");
  const gateway = mesh.endpoints.gateway!;
  say(`mesh up: gateway ${gateway}, documents ${documentsTarget}, pids ${JSON.stringify(mesh.pids)}`);
  const auth = new Auth(gateway);
  // Checks and metadata reads go straight to the service with the mesh's own client.
  const reader = createMeshClient(DocumentService, documentsTarget, { defaultTimeoutMs: 30_000 });
  const grpcJsDirect = createMeshClient(DocumentService, documentsTarget);
  // One transport (one HTTP/2 connection) per path, kept for the whole stage as a device would.
  const connectDirect = createClient(DocumentService, createGrpcTransport({ baseUrl: `http://${documentsTarget}` }));
  const connectGateway = createClient(DocumentService, createGrpcTransport({ baseUrl: gateway }));

  /** Checks what the Upload answered and that the version is there when asked afterwards. */
  const grpcLanded = (res: UploadResponse, file: SyntheticFile) => async () => {
    const v = res.version;
    if (!v || v.sha256 !== file.sha256)
      throw new Error(`Upload answered sha256 ${v?.sha256 ?? "(none)"}, the file's is ${file.sha256}`);
    if (Number(v.sizeBytes) !== file.bytes)
      throw new Error(`Upload answered ${v.sizeBytes} bytes, the file has ${file.bytes}`);
    const id = res.document!.id;
    const headers = await auth.header();
    const { document } = await checkRead("GetDocument", () => reader.getDocument({ id }, { headers }));
    if (document?.version !== v.version || Number(document.sizeBytes) !== file.bytes) {
      throw new Error(
        `GetDocument ${id}: version ${document?.version}, ${document?.sizeBytes} bytes; expected version ${v.version}, ${file.bytes} bytes`,
      );
    }
    const { versions } = await checkRead("ListVersions", () => reader.listVersions({ documentId: id }, { headers }));
    if (!versions.some((x) => x.version === v.version && x.sha256 === file.sha256))
      throw new Error(`ListVersions ${id} has no version ${v.version} with the file's sha256`);
    return `sha256 and size match, version ${v.version} listed`;
  };
  const grpcPath = (key: string, label: string, client: string, docs: DocumentsClient): Path => ({
    key,
    label,
    client,
    async send(file, title) {
      const res = await docs.upload(uploadMessages(file, title), { headers: await auth.header() });
      return { landed: grpcLanded(res, file) };
    },
  });
  const discardVia =
    (session: http2.ClientHttp2Session | (() => http2.ClientHttp2Session)) => async (file: SyntheticFile) => {
      const reply = await postChunks(typeof session === "function" ? session() : session, "/discard", file.chunks());
      return {
        landed: async () => {
          if (reply.bytes !== file.bytes) throw new Error(`sink counted ${reply.bytes} bytes, sent ${file.bytes}`);
          return "byte count matches";
        },
      };
    };
  const paths: Path[] = [
    grpcPath("direct", "documents, direct (gRPC)", "connect-node createGrpcTransport", connectDirect),
    grpcPath("gateway", "gateway, gRPC over h2c -> documents", "connect-node createGrpcTransport", connectGateway),
    grpcPath(
      "direct-grpc-js",
      "documents, direct (gRPC)",
      "grpc-js (createMeshClient, as the gateway's upstream)",
      grpcJsDirect,
    ),
    {
      key: "h2-discard",
      label: "raw HTTP/2 POST -> Node sink, discarded",
      client: "node:http2",
      send: discardVia(sinkSession),
    },
    {
      key: "h2-file",
      label: "raw HTTP/2 POST -> Node sink, file + SHA-256 + fsync",
      client: "node:http2",
      async send(file) {
        const reply = await postChunks(sinkSession, "/file", file.chunks());
        return {
          landed: async () => {
            if (reply.bytes !== file.bytes || reply.sha256 !== file.sha256)
              throw new Error(
                `sink wrote ${reply.bytes} bytes, sha256 ${reply.sha256}; sent ${file.bytes}, ${file.sha256}`,
              );
            return "sha256 and size match";
          },
        };
      },
    },
  ];
  const listenerPaths: Path[] = [
    {
      key: "listener-plain",
      label: "raw HTTP/2 POST -> Node sink (http2.createServer), discarded",
      client: "node:http2",
      send: discardVia(sinkSession),
    },
    {
      key: "listener-gateway",
      label: "raw HTTP/2 POST -> same sink behind gateway/dual-protocol-server.ts, discarded",
      client: "node:http2",
      send: discardVia(dualSession),
    },
  ];
  return {
    mesh,
    auth,
    paths,
    listenerPaths,
    pids: { ...mesh.pids, sink: sink.pid },
    async close() {
      reader.close();
      grpcJsDirect.close();
      say("stopping the mesh");
      await mesh.stop();
      // Its blobs are gigabytes and worth nothing now.
      fs.rmSync(path.join(meshDir, "blobs"), { recursive: true, force: true });
    },
  };
}

async function warmUp(paths: Path[], mib: number) {
  if (mib === 0) return;
  const warm = new SyntheticFile(mib * MiB, CHUNK_BYTES, RSS_POOL_BYTES);
  for (const p of paths) {
    say(`warm-up: ${mib} MiB via ${p.key}`);
    const { landed } = await p.send(warm, `warm-up via ${p.key}`);
    say(`  verified: ${await landed()}`);
  }
}

async function main() {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "medmesh-upload-bench-"));
  // Part 1 keeps one blob (identical uploads share it) plus the temp file of the upload in
  // flight; part 2 the same at its size; 1 GiB spare for the database and logs.
  const free = freeBytes(dataDir);
  const need = (rssMib: number) => (2 * UPLOAD_MIB + 2 * rssMib + 1024) * MiB;
  let diskNote = `${(free / 2 ** 30).toFixed(0)} GiB free on the data dir's filesystem before the run`;
  if (free < need(0)) {
    say(
      `only ${(free / MiB).toFixed(0)} MiB free under ${dataDir}; BENCH_UPLOAD_MIB=${UPLOAD_MIB} needs about ${(need(0) / MiB).toFixed(0)} MiB`,
    );
    fs.rmSync(dataDir, { recursive: true, force: true });
    process.exit(2);
  }
  if (free < need(RSS_MIB)) {
    const fits = Math.max(0, Math.floor((free / MiB - 2 * UPLOAD_MIB - 1024) / 2));
    diskNote += `; the memory run was scaled down from ${RSS_MIB} MiB to ${fits} MiB to fit`;
    say(`not enough disk for a ${RSS_MIB} MiB memory run; using ${fits} MiB`);
    RSS_MIB = fits;
  }
  const uploadMax = `${Math.max(UPLOAD_MIB, RSS_MIB, WARMUP_MIB) + 1}MiB`;
  const loadBefore = os.loadavg();
  const code = codeVersion();

  let sink: Sink | undefined;
  let stage: Stage | undefined;
  const sessions: http2.ClientHttp2Session[] = [];
  let interrupted = false;
  const onSignal = () => {
    if (interrupted) return;
    interrupted = true;
    say("interrupted; stopping");
    void Promise.all([stage?.mesh.stop(), sink?.stop()]).then(() => {
      fs.rmSync(dataDir, { recursive: true, force: true });
      process.exit(130);
    });
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  let exitCode = 0;
  try {
    sink = await startSink(dataDir);
    const sinkSession = http2.connect(sink.origin);
    const dualOrigin = sink.dualOrigin;
    // The gateway's listener closes an HTTP/2 connection left idle for GATEWAY_IDLE_TIMEOUT_MS, as
    // it should; parts 1 and 2 take longer than that, so part 3 connects when it starts.
    let dual: http2.ClientHttp2Session | undefined;
    const dualSession = () => {
      if (!dual || dual.closed || dual.destroyed) {
        dual = http2.connect(dualOrigin);
        sessions.push(dual);
      }
      return dual;
    };
    sessions.push(sinkSession);
    say(`sink up at ${sink.origin}, behind the gateway's listener at ${sink.dualOrigin} (pid ${sink.pid})`);

    // Part 2 first, each upload on a mesh of its own, and before the client holds part 1's file.
    const rssRuns: RssRun[] = [];
    let rssFile: SyntheticFile | undefined;
    if (RSS_MIB > 0) {
      rssFile = new SyntheticFile(RSS_MIB * MiB, CHUNK_BYTES, RSS_POOL_BYTES);
      for (const key of ["direct", "gateway"]) {
        stage = await openStage(dataDir, sink, uploadMax, sinkSession, dualSession);
        const p = stage.paths.find((x) => x.key === key)!;
        // Connections, JIT and the first database round trips, without leaving much behind.
        await warmUp([p], 1);
        await stage.auth.header();
        await quiet();
        say(`memory: ${RSS_MIB} MiB via ${p.label}, sampling every ${RSS_INTERVAL_MS} ms`);
        const watch: Record<string, number | "self"> = {
          documents: stage.mesh.pids.documents!,
          gateway: stage.mesh.pids.gateway!,
          client: "self",
        };
        const r = await rssRun(p, rssFile, watch);
        rssRuns.push(r);
        say(
          `  ${r.seconds.toFixed(1)} s; ${Object.entries(r.perProcess)
            .map(([n, m]) => `${n} ${mib(m.baseline)} -> peak ${mib(m.peak)} (VmHWM ${mib(m.hwm)})`)
            .join(", ")}; ${r.verified}`,
        );
        await stage.close();
        stage = undefined;
      }
    }

    stage = await openStage(dataDir, sink, uploadMax, sinkSession, dualSession);
    const meshProcesses = Object.keys(stage.mesh.pids);
    await warmUp(stage.paths, WARMUP_MIB);
    say(`generating the ${UPLOAD_MIB} MiB file`);
    const file = new SyntheticFile(UPLOAD_MIB * MiB, CHUNK_BYTES, THROUGHPUT_POOL_BYTES);
    say(`  sha256 ${file.sha256}`);
    const rows: RowResult[] = stage.paths.map((p) => ({ path: p, samples: [], failures: [] }));
    await measureRounds(rows, file, stage);

    let listener: { file: SyntheticFile; rows: RowResult[] } | undefined;
    if (LISTENER_MIB > 0) {
      const small = new SyntheticFile(LISTENER_MIB * MiB, CHUNK_BYTES, RSS_POOL_BYTES);
      listener = { file: small, rows: stage.listenerPaths.map((p) => ({ path: p, samples: [], failures: [] })) };
      await measureRounds(listener.rows, small, stage);
    }
    await stage.close();
    stage = undefined;

    const md = report({ rows, rssRuns, file, rssFile, listener, loadBefore, meshProcesses, code, diskNote, dataDir });
    fs.mkdirSync(path.join(root, "bench/results"), { recursive: true });
    fs.writeFileSync(path.join(root, "bench/results/upload.md"), md);
    process.stdout.write(md);
    if ([...rows, ...(listener?.rows ?? [])].some((r) => r.failures.length > 0)) exitCode = 1;
  } catch (err) {
    say(`failed: ${(err as Error).stack ?? err}`);
    if (stage) say(`last mesh log lines:\n${tail(stage.mesh.logFile, 20)}`);
    exitCode = 1;
  } finally {
    for (const s of sessions) s.close();
    await Promise.all([stage?.close(), sink?.stop()]);
    // Logs are kept when something failed; everything else (blobs, sink files) goes.
    if (exitCode === 0) fs.rmSync(dataDir, { recursive: true, force: true });
    else {
      for (const f of fs.readdirSync(dataDir, { recursive: true, withFileTypes: true })) {
        if (f.isFile() && f.name !== "mesh.log") fs.rmSync(path.join(f.parentPath, f.name), { force: true });
      }
      say(`kept the mesh logs under ${dataDir} for a look`);
    }
  }
  process.exit(exitCode);
}

/** The commit the run measured, and whether the tree differed from it: others edit while benches run. */
function codeVersion(): string {
  const git = (...args: string[]) => spawnSync("git", args, { cwd: root, encoding: "utf8" });
  const head = git("rev-parse", "--short", "HEAD");
  if (head.status !== 0) return "not a git checkout";
  const dirty = git("status", "--porcelain", "--untracked-files=no").stdout.trim();
  return `commit ${head.stdout.trim()}${dirty ? `, with uncommitted changes to ${dirty.split("\n").length} tracked file(s)` : ", clean tracked files"}`;
}

function throughputTable(rows: RowResult[], file: SyntheticFile): string[] {
  const lines: string[] = [];
  lines.push(
    "| path | client | MB/s (median) | MiB/s | seconds (median) | MB/s min – max | client CPU s | gateway CPU s | documents CPU s | postgres CPU s | sink CPU s | other load (cores, max) | verified |",
  );
  lines.push("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|");
  const medianOf = (r: RowResult, f: (s: Sample) => number) => median(r.samples.map(f));
  for (const r of rows) {
    const rates = r.samples.map((s) => file.bytes / 1e6 / s.seconds);
    const sec = medianOf(r, (s) => s.seconds);
    const cpu = (n: string) =>
      fmt(
        medianOf(r, (s) => s.cpu[n] ?? NaN),
        2,
      );
    const verified = r.failures.length
      ? `**${r.failures.length} of ${REPEAT} failed**: ${r.failures[0]!.replace(/\|/g, "\\|").slice(0, 200)}`
      : `${r.samples.length} of ${REPEAT}`;
    lines.push(
      `| ${r.path.label} | ${r.path.client} | ${fmt(median(rates))} | ${fmt(file.bytes / MiB / sec)} | ${fmt(sec, 2)} | ${fmt(Math.min(...rates))} – ${fmt(Math.max(...rates))} | ` +
        `${cpu("client")} | ${cpu("gateway")} | ${cpu("documents")} | ${cpu("postgres")} | ${cpu("sink")} | ${fmt(Math.max(...r.samples.map((s) => s.otherCores)), 2)} | ${verified} |`,
    );
  }
  return lines;
}

function report(input: {
  rows: RowResult[];
  rssRuns: RssRun[];
  file: SyntheticFile;
  rssFile: SyntheticFile | undefined;
  listener: { file: SyntheticFile; rows: RowResult[] } | undefined;
  loadBefore: number[];
  meshProcesses: string[];
  code: string;
  diskNote: string;
  dataDir: string;
}): string {
  const { rows, file } = input;
  const cpus = os.cpus();
  const lines: string[] = [];
  lines.push("# Upload benchmark: client-streaming Upload, with and without the gateway, against bare HTTP/2", "");
  lines.push(
    `Run ${new Date().toISOString()} on ${cpus.length} x ${cpus[0]?.model?.trim() ?? "cpu"} (nproc ${os.availableParallelism()}), ` +
      `${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}; ` +
      `load average before the run ${input.loadBefore.map((l) => l.toFixed(2)).join(" ")}.`,
  );
  lines.push(
    `Data dir under ${path.dirname(input.dataDir)}: ${input.diskNote}. Code: ${input.code} at the start of the run.`,
  );
  lines.push(
    "Embedded mesh as `npm start` runs it (PGlite behind the pg wire protocol, the in-repo Kafka broker, telemetry without an exporter), " +
      `with UPLOAD_MAX_BYTES raised; processes: ${input.meshProcesses.join(", ")}. The documents service stores each upload with FsBlobStore ` +
      "(temp file, SHA-256, fsync, rename). " +
      (input.meshProcesses.includes("processing")
        ? "The processing worker runs with PROCESSING_MAX_BYTES=1, so it records each upload as too_large without reading it back during the timed runs."
        : "No processing worker ran."),
  );
  lines.push("");
  lines.push(
    `Command: \`npm run bench:upload\` (= \`node --import tsx bench/upload.ts\`) with BENCH_UPLOAD_MIB=${UPLOAD_MIB}, BENCH_REPEAT=${REPEAT}, ` +
      `BENCH_UPLOAD_CHUNK_KIB=${CHUNK_BYTES / 1024}, BENCH_RSS_MIB=${RSS_MIB}, BENCH_WARMUP_MIB=${WARMUP_MIB}.`,
  );
  lines.push("");
  lines.push(`## 1. Throughput: one ${UPLOAD_MIB} MiB file, ${CHUNK_BYTES / 1024} KiB chunks`, "");
  lines.push(
    `The file starts with \`%PDF-1.7\\n\`, the rest is random (sha256 \`${file.sha256.slice(0, 16)}…\`). Each gRPC upload is a header message and ` +
      `${Math.ceil(file.bytes / CHUNK_BYTES)} chunk messages on one client stream; the raw rows POST the same bytes unframed over one HTTP/2 stream. ` +
      `${REPEAT} rounds, each round every row once in the order below, after a ${WARMUP_MIB} MiB untimed upload per row. ` +
      "Time runs from the call until the server's answer, so it includes the server's fsync and, for gRPC, recording the version in Postgres. " +
      "The sink is a node:http2 server (Node's default settings) in a process of its own, as documents is; its file row hashes the body, " +
      "writes it in 1 MiB writes as the blob store does, and fsyncs before it answers.",
  );
  lines.push("");
  lines.push(...throughputTable(rows, file));
  lines.push("");
  lines.push(
    "MB is 10^6 bytes, MiB 2^20. CPU seconds are per upload (median over rounds), from /proc for the mesh and the sink and from process.cpuUsage for the client. " +
      '"Other load" is machine busy time not spent by any of these, in cores: well above 0 means someone else was using the machine. ' +
      "Verified means: for gRPC, the SHA-256 and size in the Upload answer are the file's, GetDocument shows that version as current and ListVersions lists it " +
      "with the same SHA-256; for the sink, the byte count (discard) or the SHA-256 of what was written (file).",
  );
  if (readRetries.length) {
    lines.push(
      "",
      `${readRetries.length} of those check reads failed with Internal and passed when repeated (the upload itself had succeeded): ` +
        [...new Set(readRetries)].map((r) => `\`${r.replace(/`/g, "'")}\``).join("; ") +
        ".",
    );
  }
  const byKey = (k: string) => rows.find((r) => r.path.key === k);
  const rate = (k: string) => {
    const r = byKey(k);
    return r && r.samples.length ? median(r.samples.map((s) => file.bytes / 1e6 / s.seconds)) : NaN;
  };
  const ratios: string[] = [];
  const pair = (a: string, b: string, what: string) =>
    Number.isFinite(rate(a) / rate(b)) && ratios.push(`${what}: ${fmt(rate(a) / rate(b), 2)}`);
  pair("gateway", "direct", "gateway / direct");
  pair("direct", "h2-file", "direct gRPC / raw HTTP/2 to an fsynced file");
  pair("direct", "h2-discard", "direct gRPC / raw HTTP/2 discarded");
  pair("h2-file", "h2-discard", "raw to file / raw discarded");
  if (ratios.length) lines.push("", `Ratios of the medians: ${ratios.join("; ")}.`);
  lines.push("");

  if (input.rssRuns.length && input.rssFile) {
    const rf = input.rssFile;
    lines.push(`## 2. Memory while uploading ${RSS_MIB} MiB`, "");
    lines.push(
      `The client makes the file up as it sends it: a ${mib(rf.poolBytes())} pool of random bytes cycled in ${CHUNK_BYTES / 1024} KiB chunks behind a PDF header ` +
        `(sha256 \`${rf.sha256.slice(0, 16)}…\`, sent in the header and checked by the server). RSS (VmRSS) sampled every ${RSS_INTERVAL_MS} ms; ` +
        "baseline is the median of 10 samples in the second before the upload; VmHWM is the kernel's own peak, reset just before the upload " +
        "(`echo 5 > /proc/<pid>/clear_refs`), so it catches a spike between samples. Each upload runs on a freshly started mesh after a 1 MiB warm-up " +
        "upload on the same path: the documents process keeps its RSS after an upload until V8 next collects, so a second upload on the same mesh would " +
        "start from the first one's peak.",
    );
    lines.push("");
    lines.push(
      "| upload | process | baseline RSS | peak RSS (sampled) | peak (VmHWM) | peak − baseline | as a share of the file | 1 s after |",
    );
    lines.push("|---|---|---:|---:|---:|---:|---:|---:|");
    for (const r of input.rssRuns) {
      for (const [n, m] of Object.entries(r.perProcess)) {
        const grew = Math.max(m.peak, Number.isFinite(m.hwm) ? m.hwm : 0) - m.baseline;
        lines.push(
          `| ${r.path.label} | ${n === "client" ? "client (this bench)" : n} | ${mib(m.baseline)} | ${mib(m.peak)} | ${mib(m.hwm)} | ${mib(grew)} | ${fmt((100 * grew) / rf.bytes, 0)} % | ${mib(m.after)} |`,
        );
      }
    }
    lines.push("");
    lines.push("| upload | seconds | MB/s | samples | longest gap between samples | verified |");
    lines.push("|---|---:|---:|---:|---:|---|");
    for (const r of input.rssRuns) {
      lines.push(
        `| ${r.path.label} | ${fmt(r.seconds, 1)} | ${fmt(rf.bytes / 1e6 / r.seconds)} | ${r.samples} | ${fmt(r.maxGapMs, 0)} ms | ${r.verified} |`,
      );
    }
    lines.push("");
  }
  if (input.listener) {
    const { file: small, rows: lrows } = input.listener;
    lines.push(`## 3. The gateway's listener alone: ${LISTENER_MIB} MiB, raw HTTP/2, no gRPC`, "");
    lines.push(
      "The gateway takes HTTP/1.1 and HTTP/2 on one port: gateway/dual-protocol-server.ts accepts the TCP connection itself, looks at the first bytes " +
        "and hands the socket itself to node:http2, the sniffed bytes put back on it. Here the sink's discard handler sits behind that listener and behind a plain " +
        "`http2.createServer`, in the same process, and the same bytes are POSTed to each; no gRPC, no forwarding, no disk.",
    );
    lines.push("");
    lines.push(...throughputTable(lrows, small));
    lines.push("");
  }
  lines.push(
    "Rerun: `npm run bench:upload`. BENCH_UPLOAD_MIB, BENCH_UPLOAD_CHUNK_KIB (at most 1024, the contract's limit), BENCH_REPEAT, BENCH_WARMUP_MIB shape part 1; " +
      "BENCH_RSS_MIB (0 skips) and BENCH_RSS_INTERVAL_MS part 2; BENCH_LISTENER_MIB (0 skips) part 3; BENCH_QUIET_WAIT_SECONDS bounds the wait for an idle machine before each upload. " +
      "Needs about 2 x (BENCH_UPLOAD_MIB + BENCH_RSS_MIB) + 1 GiB free under the temp dir; the data dir is removed afterwards.",
  );
  return lines.join("\n") + "\n";
}

void main();
