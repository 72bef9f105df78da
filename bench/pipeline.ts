/**
 * The whole document pipeline on the embedded default: `npm run bench:pipeline`
 * (node --import tsx bench/pipeline.ts). Starts the `npm start` launcher on free ports with a
 * temporary data dir, signs in as the bootstrap admin and uploads one-page PDFs through the
 * gateway (gRPC client streaming), then waits for each to be INDEXED (upload -> outbox ->
 * Kafka -> worker -> ReadContent -> analysis -> RecordProcessingResult -> DocumentProcessed ->
 * search's indexer -> DocumentIndexed -> RecordIndexed; PROCESSED is the end where the mesh runs
 * without search) and writes bench/results/pipeline.md (pipeline-postgres.md when DATABASE_URL
 * names a server).
 *
 * Two runs, one after the other on the same mesh:
 *  - flood: BENCH_DOCS (1000) uploads as fast as BENCH_UPLOAD_CONCURRENCY (8) uploaders go.
 *    Gives documents per second through the whole pipeline; latency here is mostly queueing.
 *  - paced: BENCH_PACED_DOCS (200) uploads at half the flood's throughput, so the pipeline keeps
 *    up and upload -> INDEXED shows what one document costs when nothing waits in line.
 *
 * BENCH_CPU_PROF_DIR=<dir> runs every process of the mesh with --cpu-prof writing there (one
 * .cpuprofile per process and thread, named by pid; the pids are printed at start).
 *
 * Latency is measured on the server's clock, from the version's create_time (the upload was
 * acknowledged) to the INDEXED change_time, read back through WatchDocument; the same
 * machine's clock also dates the client's first upload for the throughput window.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import {
  DocumentService,
  DocumentType,
  ProcessingStatus,
  type UploadRequest,
} from "../gen/medmesh/documents/v1/documents_pb.js";
import { onePagePdf } from "../test/fixtures/documents/make-fixtures.js";
import { cpuSecondsOf, databaseDescription, memoryOf, resultsFile, startMesh } from "./lib/mesh.js";
import { percentile } from "./lib/tools.js";
import { intFromEnv } from "./lib/env.js";
import { fmt, mib, say } from "./lib/format.js";
import { signInBenchAdmin } from "./lib/sign-in.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

const DOCS = intFromEnv("BENCH_DOCS", 1000, 1, 100_000);
const PACED_DOCS = intFromEnv("BENCH_PACED_DOCS", 200, 0, 100_000);
const CONCURRENCY = intFromEnv("BENCH_UPLOAD_CONCURRENCY", 8, 1, 256);
const TIMEOUT_SECONDS = intFromEnv("BENCH_TIMEOUT_SECONDS", 1800, 10, 7200);
const PROF_DIR = process.env.BENCH_CPU_PROF_DIR || undefined;

type Docs = ReturnType<typeof createClient<typeof DocumentService>>;

interface Uploaded {
  id: string;
  /** Server clock: the version was stored and acknowledged. */
  storedMs: number;
}

interface Finished {
  status: ProcessingStatus;
  /** Server clock: the terminal status was recorded. */
  atMs: number;
}

interface RunResult {
  name: string;
  docs: number;
  firstUploadMs: number;
  lastUploadMs: number;
  lastDoneMs: number;
  latencies: number[];
  failed: number;
  cpu: Record<string, number>;
  peakRss: Record<string, number>;
}

async function* uploadOf(n: number, run: string): AsyncIterable<UploadRequest> {
  yield {
    part: {
      case: "header",
      value: {
        document: { title: `Pipeline bench ${run} ${n}`, documentType: DocumentType.CASE_REPORT },
        filename: `case-${n}.pdf`,
        declaredMimeType: "application/pdf",
      },
    },
  } as UploadRequest;
  yield { part: { case: "chunk", value: onePagePdf(n) } } as unknown as UploadRequest;
}

/** Where a document ended up, read back once it is done: a watch of a finished document says so and ends. */
async function finished(docs: Docs, id: string): Promise<Finished> {
  let last: Finished | undefined;
  for await (const m of docs.watchDocument({ id }, { timeoutMs: 30_000 })) {
    last = { status: m.status, atMs: m.changeTime ? timestampMs(m.changeTime) : NaN };
  }
  if (!last) throw new Error(`no status for ${id}`);
  return last;
}

/** Where a document's pipeline ends: INDEXED with search in the mesh, PROCESSED without it. */
const finalStatus = (pids: Record<string, number>) =>
  "search" in pids ? ProcessingStatus.INDEXED : ProcessingStatus.PROCESSED;

/**
 * Waits until no document is short of its final status (the CPU figures are read then, so they
 * include the indexing). Two one-row list calls a second cost the mesh nothing next to the
 * pipeline, unlike a watch per document would.
 */
async function drained(docs: Docs, pids: Record<string, number>): Promise<void> {
  const deadline = Date.now() + TIMEOUT_SECONDS * 1000;
  const inFlight = [ProcessingStatus.PENDING, ProcessingStatus.UPLOADED, ProcessingStatus.PROCESSING];
  if (finalStatus(pids) === ProcessingStatus.INDEXED) inFlight.push(ProcessingStatus.PROCESSED);
  for (;;) {
    const busy = await Promise.all(inFlight.map((s) => docs.listDocuments({ processingStatus: s, pageSize: 1 })));
    if (busy.every((b) => b.documents.length === 0)) return;
    if (Date.now() > deadline) throw new Error(`documents still in flight after ${TIMEOUT_SECONDS} s`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Runs `fn` over `items` with at most `n` at once. */
async function pool<T, R>(items: T[], n: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      for (let i = next++; i < items.length; i = next++) out[i] = await fn(items[i]!);
    }),
  );
  return out;
}

async function run(
  name: string,
  docs: Docs,
  count: number,
  offset: number,
  pids: Record<string, number>,
  intervalMs: number,
): Promise<RunResult> {
  const cpuBefore = Object.fromEntries(Object.entries(pids).map(([n, p]) => [n, cpuSecondsOf(p)]));
  const peakRss: Record<string, number> = {};
  const sampler = setInterval(() => {
    for (const [n, p] of Object.entries(pids)) peakRss[n] = Math.max(peakRss[n] ?? 0, memoryOf(p)?.rssBytes ?? 0);
  }, 200);
  const firstUploadMs = Date.now();
  const uploaded: Uploaded[] = [];
  let next = 0;
  let lastUploadMs = firstUploadMs;
  const uploader = async () => {
    for (;;) {
      const i = next++;
      if (i >= count) return;
      if (intervalMs > 0) {
        const wait = firstUploadMs + i * intervalMs - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
      const res = await docs.upload(uploadOf(offset + i, name), { timeoutMs: 60_000 });
      uploaded.push({ id: res.document!.id, storedMs: timestampMs(res.version!.createTime!) });
      lastUploadMs = Date.now();
      if ((i + 1) % 100 === 0) say(`  ${name}: ${i + 1}/${count} uploaded`);
    }
  };
  // Paced uploads must not queue behind each other, or the pace would be the uploaders'.
  await Promise.all(Array.from({ length: intervalMs > 0 ? Math.max(CONCURRENCY, 32) : CONCURRENCY }, uploader));
  say(`  ${name}: all ${count} uploaded in ${fmt((lastUploadMs - firstUploadMs) / 1000)} s; waiting for processing`);
  await drained(docs, pids);
  clearInterval(sampler);
  const cpu = Object.fromEntries(Object.entries(pids).map(([n, p]) => [n, cpuSecondsOf(p) - cpuBefore[n]!]));
  const outcomes = await pool(uploaded, 16, async (up) => ({ up, done: await finished(docs, up.id) }));
  const latencies = outcomes.map((o) => o.done.atMs - o.up.storedMs).sort((a, b) => a - b);
  return {
    name,
    docs: count,
    firstUploadMs,
    lastUploadMs,
    lastDoneMs: Math.max(...outcomes.map((o) => o.done.atMs)),
    latencies,
    failed: outcomes.filter((o) => o.done.status !== finalStatus(pids)).length,
    cpu,
    peakRss,
  };
}

function report(r: RunResult): string[] {
  const seconds = (r.lastDoneMs - r.firstUploadMs) / 1000;
  const uploadSeconds = (r.lastUploadMs - r.firstUploadMs) / 1000;
  const l = r.latencies;
  return [
    `| ${r.name} | ${r.docs} | ${fmt(r.docs / uploadSeconds)} | ${fmt(r.docs / seconds, 1)} | ${fmt(percentile(l, 50), 0)} ms | ${fmt(percentile(l, 99), 0)} ms | ${fmt(l[l.length - 1]!, 0)} ms | ${r.failed} |`,
  ];
}

async function main() {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "medmesh-pipeline-bench-"));
  say(`starting the mesh (data dir ${dataDir})`);
  const mesh = await startMesh({
    root,
    dataDir,
    required: ["gateway", "documents", "processing"],
    timeoutMs: 180_000,
    // One signed-in user sends every upload; the per-user stream cap (4 by default) would refuse the
    // paced run's uploaders, which must not queue behind each other.
    env: {
      UPLOAD_MAX_STREAMS: String(Math.max(CONCURRENCY, 32)),
    },
    nodeArgs: PROF_DIR ? ["--cpu-prof", `--cpu-prof-dir=${path.resolve(PROF_DIR)}`] : [],
  });
  let exitCode = 0;
  try {
    const gateway = mesh.endpoints.gateway!;
    say(`mesh up: gateway ${gateway}, pids ${JSON.stringify(mesh.pids)}`);
    const token = await signInBenchAdmin(gateway);
    const auth: Interceptor = (next) => (req) => {
      req.header.set("authorization", `Bearer ${token}`);
      return next(req);
    };
    const docs = createClient(DocumentService, createGrpcTransport({ baseUrl: gateway, interceptors: [auth] }));

    // A few documents first, so start-up costs (JIT, the first PDF parse, consumer join) are not in the figures.
    say("warming up with 20 documents");
    await run("warm-up", docs, 20, 1_000_000, mesh.pids, 0);

    say(`flood: ${DOCS} documents, ${CONCURRENCY} uploaders`);
    const flood = await run("flood", docs, DOCS, 0, mesh.pids, 0);
    const floodRate = flood.docs / ((flood.lastDoneMs - flood.firstUploadMs) / 1000);
    const results = [flood];
    if (PACED_DOCS > 0) {
      const interval = 1000 / (floodRate / 2);
      say(`paced: ${PACED_DOCS} documents at ${fmt(floodRate / 2)} per second`);
      results.push(await run("paced (half the flood's rate)", docs, PACED_DOCS, DOCS, mesh.pids, interval));
    }
    const damage = mesh.damage();
    if (damage) throw new Error(damage);

    const lines = [
      "# Document pipeline benchmark",
      "",
      `Run ${new Date().toISOString()} on ${os.cpus().length} x ${os.cpus()[0]?.model.split(" ").slice(0, 2).join(" ")}, Node ${process.version}, ${os.platform()} ${os.release()}.`,
      `The mesh as \`npm start\` runs it (the embedded broker, identity, documents, processing, search, gateway, one process each) on ${databaseDescription()}, on this machine;`,
      "the bench client uploads one-page PDFs (about 1.3 KB, each different) through the gateway with gRPC client streaming, waits until nothing is in flight (two one-row ListDocuments a second) and then reads each final status with WatchDocument.",
      "Latency: server clock, version create_time (upload acknowledged) to the INDEXED change_time (search indexed it and documents recorded that).",
      "",
      "| run | documents | uploads/s | documents/s through the pipeline | upload -> INDEXED p50 | p99 | max | not INDEXED |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
      ...results.flatMap(report),
      "",
      "CPU seconds used per process during the flood, and peak RSS:",
      "",
      "| process | CPU s | peak RSS |",
      "|---|---:|---:|",
      ...Object.keys(flood.cpu).map((n) => `| ${n} | ${fmt(flood.cpu[n]!)} | ${mib(flood.peakRss[n] ?? NaN)} |`),
      "",
      `Command: \`BENCH_DOCS=${DOCS} BENCH_PACED_DOCS=${PACED_DOCS} BENCH_UPLOAD_CONCURRENCY=${CONCURRENCY} npm run bench:pipeline\``,
      "",
    ];
    fs.writeFileSync(resultsFile(root, "pipeline"), lines.join("\n"));
    process.stdout.write(lines.join("\n"));
  } catch (err) {
    say(`failed: ${(err as Error).stack ?? err}`);
    say(`mesh log: ${mesh.logFile}`);
    exitCode = 1;
  } finally {
    await mesh.stop();
    if (exitCode === 0) fs.rmSync(dataDir, { recursive: true, force: true });
  }
  process.exit(exitCode);
}

void main();
