/**
 * Unary GetDocument through each path into the documents service, side by side in one run:
 * `node --import tsx bench/gateway.ts`. Starts its own mesh (the `npm start` launcher) on free
 * loopback ports with a temporary data dir, seeds one document, proves every request shape with a
 * real client before loading it, runs each load for a warm-up and a measured window, stops the
 * mesh and writes bench/results/gateway.md (gateway-postgres.md when DATABASE_URL names a server).
 *
 * BENCH_SECONDS (10), BENCH_WARMUP_SECONDS (2, before each row), BENCH_MESH_WARMUP_SECONDS (10,
 * once, before the first row), BENCH_CONCURRENCY (64) and BENCH_H2_CLIENTS (1; h2load
 * connections, streams per connection = concurrency / clients) change the shape;
 * BENCH_QUIET_WAIT_SECONDS (30) bounds the wait for an idle machine before each row.
 * h2load (Debian: nghttp2-client) and wrk are optional: a missing one skips its rows.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { fromBinary, toBinary, create } from "@bufbuild/protobuf";
import { type Interceptor, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import {
  DocumentService,
  DocumentType,
  GetDocumentRequestSchema,
  GetDocumentResponseSchema,
} from "../gen/medmesh/documents/v1/documents_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { closedLoop } from "./lib/grpc-load.js";
import {
  cpuSecondsOf,
  databaseDescription,
  resultsFile,
  machineCpuSeconds,
  memoryOf,
  QUIET_CORES,
  startMesh,
  tail,
  waitForQuiet,
  type Mesh,
  type ProcMemory,
} from "./lib/mesh.js";
import { grpcFrame, percentile, runH2load, runWrk, versionOf, which, type ToolResult } from "./lib/tools.js";
import { rawGrpcCall, singleFrame } from "./lib/verify.js";
import { intFromEnv } from "./lib/env.js";
import { fmt, mib, say } from "./lib/format.js";
import { signInBenchAdmin } from "./lib/sign-in.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const METHOD_PATH = `/${DocumentService.typeName}/GetDocument`;

const SECONDS = intFromEnv("BENCH_SECONDS", 10, 1, 120);
const WARMUP_SECONDS = intFromEnv("BENCH_WARMUP_SECONDS", 2, 0, 60);
const CONCURRENCY = intFromEnv("BENCH_CONCURRENCY", 64, 1, 1024);
const H2_CLIENTS = intFromEnv("BENCH_H2_CLIENTS", 1, 1, CONCURRENCY);
const MESH_WARMUP_SECONDS = intFromEnv("BENCH_MESH_WARMUP_SECONDS", 10, 0, 120);
const QUIET_WAIT_SECONDS = intFromEnv("BENCH_QUIET_WAIT_SECONDS", 30, 0, 600);
if (CONCURRENCY % H2_CLIENTS !== 0) {
  process.stderr.write(
    `bench: BENCH_CONCURRENCY (${CONCURRENCY}) must be a multiple of BENCH_H2_CLIENTS (${H2_CLIENTS})\n`,
  );
  process.exit(2);
}

type Outcome =
  | { kind: "measured"; result: ToolResult; cpu: CpuShare }
  | { kind: "skipped"; reason: string }
  | { kind: "error"; reason: string };

interface Row {
  path: string;
  generator: string;
  outcome: Outcome;
}

interface CpuShare {
  /** Cores used on average by each mesh process while the load ran (warm-up included). */
  perProcess: Record<string, number>;
  generator: number;
  /** Cores busy on the whole machine over the same time. */
  machine: number;
  /** What the machine spent beyond the mesh and the generator: other work sharing the cores. */
  others: number;
}

/** Runs `load` while accounting the CPU each mesh process and the machine spent meanwhile. */
async function withCpu(pids: Record<string, number>, load: () => Promise<ToolResult>): Promise<Outcome> {
  const before = Object.fromEntries(Object.entries(pids).map(([n, p]) => [n, cpuSecondsOf(p)]));
  const machineBefore = machineCpuSeconds();
  const t0 = performance.now();
  try {
    const result = await load();
    const wall = (performance.now() - t0) / 1000;
    const machine = (machineCpuSeconds().busy - machineBefore.busy) / wall;
    const perProcess = Object.fromEntries(
      Object.entries(pids).map(([n, p]) => [n, (cpuSecondsOf(p) - before[n]!) / wall]),
    );
    const generator = result.generatorCpuSeconds / wall;
    const others = machine - generator - Object.values(perProcess).reduce((a, b) => a + b, 0);
    return { kind: "measured", result, cpu: { perProcess, generator, machine, others } };
  } catch (err) {
    return { kind: "error", reason: (err as Error).message };
  }
}

/** Everything a load is about to send, proven with real clients and with the exact bytes. */
interface Verified {
  id: string;
  /** DATA bytes of one successful GetDocument response, per gRPC target origin. */
  okDataBytes: Record<string, number>;
  /** Why a path cannot be measured, when it cannot. */
  broken: Record<"documents" | "gatewayGrpc" | "gatewayConnect", string | undefined>;
}

interface Clients {
  direct: Client<typeof DocumentService>;
  grpcViaGateway: Client<typeof DocumentService>;
  connectViaGateway: Client<typeof DocumentService>;
}

async function verify(
  mesh: Mesh,
  clients: Clients,
  id: string,
  body: Buffer,
  connectBody: string,
  getUrl: string,
): Promise<Verified> {
  const { direct, grpcViaGateway, connectViaGateway } = clients;
  const gateway = mesh.endpoints.gateway!;
  const documentsOrigin = `http://${mesh.endpoints.documents!.replace(/^grpc:\/\//, "")}`;
  const out: Verified = {
    id,
    okDataBytes: {},
    broken: { documents: undefined, gatewayGrpc: undefined, gatewayConnect: undefined },
  };
  const check = async (key: keyof Verified["broken"], what: string, fn: () => Promise<void>) => {
    try {
      await fn();
      say(`verified: ${what}`);
    } catch (err) {
      out.broken[key] = `${what}: ${(err as Error).message}`;
      say(`VERIFY FAILED: ${out.broken[key]}`);
    }
  };
  const expectId = (got: string | undefined, via: string) => {
    if (got !== id) throw new Error(`${via} returned document ${got ?? "(none)"}, expected ${id}`);
  };
  const rawBytes = async (origin: string) => {
    const reply = await rawGrpcCall(origin, METHOD_PATH, body);
    if (reply.httpStatus !== 200 || reply.grpcStatus !== "0") {
      throw new Error(
        `HTTP ${reply.httpStatus}, grpc-status ${reply.grpcStatus ?? "(none)"} ${reply.grpcMessage ?? ""}`,
      );
    }
    const frame = singleFrame(reply.data);
    if (typeof frame === "string") throw new Error(frame);
    expectId(fromBinary(GetDocumentResponseSchema, frame).document?.id, "the pre-encoded request");
    out.okDataBytes[origin] = reply.data.length;
  };

  await check("documents", "grpc-js client -> documents", async () =>
    expectId((await direct.getDocument({ id })).document?.id, "grpc-js"),
  );
  await check("documents", `h2load's request bytes -> documents (grpc-status 0 in trailers)`, () =>
    rawBytes(documentsOrigin),
  );

  await check("gatewayGrpc", "connect-node gRPC client -> gateway (h2c)", async () =>
    expectId((await grpcViaGateway.getDocument({ id }, { timeoutMs: 5_000 })).document?.id, "gateway gRPC"),
  );
  await check("gatewayGrpc", `h2load's request bytes -> gateway (grpc-status 0 in trailers)`, () => rawBytes(gateway));

  await check("gatewayConnect", "connect-node Connect JSON client (HTTP/1.1, GET) -> gateway", async () =>
    expectId((await connectViaGateway.getDocument({ id }, { timeoutMs: 5_000 })).document?.id, "gateway Connect"),
  );
  await check("gatewayConnect", "wrk's POST and GET requests -> gateway (HTTP 200, the document)", async () => {
    const headers = { "connect-protocol-version": "1", authorization: process.env.BENCH_AUTHORIZATION! };
    for (const [how, res] of [
      [
        "POST",
        await fetch(gateway + METHOD_PATH, {
          method: "POST",
          headers: { ...headers, "content-type": "application/json" },
          body: connectBody,
        }),
      ],
      ["GET", await fetch(getUrl, { headers })],
    ] as const) {
      const text = await res.text();
      if (res.status !== 200) throw new Error(`${how}: HTTP ${res.status} ${text.slice(0, 200)}`);
      expectId((JSON.parse(text) as { document?: { id?: string } }).document?.id, how);
    }
  });
  return out;
}

function failuresText(f: Record<string, number>): string {
  const entries = Object.entries(f);
  return entries.length ? entries.map(([k, v]) => `${v} ${k}`).join(", ") : "0";
}

async function main() {
  const tools = { h2load: which("h2load"), wrk: which("wrk") };
  if (!tools.h2load)
    say("h2load not found on PATH (Debian/Ubuntu: apt-get install nghttp2-client); its rows will be skipped");
  if (!tools.wrk) say("wrk not found on PATH (Debian/Ubuntu: apt-get install wrk); its rows will be skipped");

  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "medmesh-gateway-bench-"));
  const loadBefore = os.loadavg();
  say(`starting the mesh (data dir ${dataDir})`);
  const mesh = await startMesh({ root, dataDir, required: ["gateway", "documents"], timeoutMs: 180_000 });
  let interrupted = false;
  const onSignal = () => {
    if (interrupted) return;
    interrupted = true;
    say("interrupted; stopping the mesh");
    void mesh.stop().then(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const documentsTarget = mesh.endpoints.documents!.replace(/^grpc:\/\//, "");
  const documentsOrigin = `http://${documentsTarget}`;
  const gateway = mesh.endpoints.gateway!;
  say(`mesh up: gateway ${gateway}, documents ${documentsTarget}, pids ${JSON.stringify(mesh.pids)}`);
  let exitCode = 0;
  // Sign in as the embedded default's bootstrap admin; every load below sends this token.
  process.env.BENCH_AUTHORIZATION = `Bearer ${await signInBenchAdmin(gateway)}`;
  const authHeader = { authorization: process.env.BENCH_AUTHORIZATION };
  const withAuth: Interceptor = (next) => (req) => {
    req.header.set("authorization", authHeader.authorization);
    return next(req);
  };
  const direct = createMeshClient(DocumentService, documentsTarget, { defaultTimeoutMs: 10_000, headers: authHeader });
  try {
    const { document } = await direct.createDocument({
      document: {
        title: "Effect of early mobilisation after hip fracture surgery: a randomised trial",
        authors: ["A. Example", "B. Sample", "C. Placeholder"],
        journal: "Journal of Benchmark Medicine",
        publicationDate: "2024-03-15",
        // Unique per run: on a real server the database outlives the run, and DOIs are unique.
        doi: `10.5555/bench.gateway.${Date.now()}`,
        documentType: DocumentType.CLINICAL_TRIAL,
        specialty: "orthopaedics",
        metadata: { source: "bench" },
      },
    });
    const id = document!.id;
    say(`seeded document ${id}`);

    const body = grpcFrame(toBinary(GetDocumentRequestSchema, create(GetDocumentRequestSchema, { id })));
    const bodyFile = path.join(dataDir, "get-document.grpc");
    fs.writeFileSync(bodyFile, body);
    const connectBody = JSON.stringify({ id });
    const getUrl = `${gateway}${METHOD_PATH}?connect=v1&encoding=json&message=${encodeURIComponent(connectBody)}`;
    const clients: Clients = {
      direct,
      grpcViaGateway: createClient(
        DocumentService,
        createGrpcTransport({ baseUrl: gateway, interceptors: [withAuth] }),
      ),
      connectViaGateway: createClient(
        DocumentService,
        createConnectTransport({ baseUrl: gateway, httpVersion: "1.1", useHttpGet: true, interceptors: [withAuth] }),
      ),
    };
    const verified = await verify(mesh, clients, id, body, connectBody, getUrl);

    // Let start-up work (JIT, GC after migrations) settle so "idle" means idle.
    await new Promise((r) => setTimeout(r, 1_000));
    const idleMemory: Record<string, ProcMemory | undefined> = Object.fromEntries(
      Object.entries(mesh.pids).map(([n, p]) => [n, memoryOf(p)]),
    );

    // A cold mesh (V8 and PGlite's WebAssembly still tiering up) runs at a fraction of its
    // speed for its first several thousand calls; without this the first row would measure
    // warm-up. Every path the rows use is exercised, so no row inherits another's warm-up.
    if (MESH_WARMUP_SECONDS > 0) {
      say(`warming the mesh up for ${MESH_WARMUP_SECONDS}s through every path`);
      const paths = [
        () => direct.getDocument({ id }),
        () => clients.grpcViaGateway.getDocument({ id }),
        () => clients.connectViaGateway.getDocument({ id }),
      ];
      let turn = 0;
      const warm = await closedLoop(() => paths[turn++ % paths.length]!(), {
        concurrency: CONCURRENCY,
        warmupMs: 0,
        durationMs: MESH_WARMUP_SECONDS * 1000,
      });
      say(`  ${warm.ok} calls, ${Object.values(warm.errors).reduce((a, b) => a + b, 0)} failed`);
    }

    const streams = CONCURRENCY / H2_CLIENTS;
    const h2Shape = `${H2_CLIENTS} conn x ${streams} streams`;
    const rows: Row[] = [];
    const measure = async (
      row: Omit<Row, "outcome">,
      needs: { tool?: keyof typeof tools; path: keyof Verified["broken"] },
      load: () => Promise<ToolResult>,
    ) => {
      let outcome: Outcome;
      const damageBefore = mesh.damage();
      if (damageBefore) outcome = { kind: "skipped", reason: damageBefore };
      else if (needs.tool && !tools[needs.tool])
        outcome = { kind: "skipped", reason: `${needs.tool} is not installed` };
      else if (verified.broken[needs.path])
        outcome = { kind: "skipped", reason: `verification failed: ${verified.broken[needs.path]}` };
      else {
        if (QUIET_WAIT_SECONDS > 0) {
          const q = await waitForQuiet(QUIET_WAIT_SECONDS);
          if (q.busyCores >= QUIET_CORES)
            say(
              `machine still busy (${fmt(q.busyCores, 2)} cores) after waiting ${fmt(q.waitedSeconds, 0)}s; measuring anyway`,
            );
          else if (q.waitedSeconds > 1.5) say(`waited ${fmt(q.waitedSeconds, 0)}s for the machine to go quiet`);
        }
        say(`load: ${row.path} with ${row.generator} (${WARMUP_SECONDS}s warm-up + ${SECONDS}s)`);
        outcome = await withCpu(mesh.pids, load);
        // Figures taken while the mesh was being torn down measure the teardown, not the path.
        const damage = mesh.damage();
        if (damage) outcome = { kind: "error", reason: `during this load: ${damage}` };
        if (outcome.kind === "measured") {
          const r = outcome.result;
          say(
            `  ${fmt(r.ok / r.durationSeconds, 0)} req/s, p50 ${fmt(r.p50Ms, 2)} ms, p99 ${fmt(r.p99Ms, 2)} ms, failures: ${failuresText(r.failures)}`,
          );
        } else say(`  ${outcome.reason}`);
      }
      rows.push({ ...row, outcome });
    };

    await measure(
      { path: "documents (direct)", generator: `grpc-js, createMeshClient, 1 channel, ${CONCURRENCY} in flight` },
      { path: "documents" },
      async () => {
        const cpu0 = process.cpuUsage();
        const r = await closedLoop(() => direct.getDocument({ id }), {
          concurrency: CONCURRENCY,
          warmupMs: WARMUP_SECONDS * 1000,
          durationMs: SECONDS * 1000,
        });
        const cpu1 = process.cpuUsage(cpu0);
        return {
          generatorCpuSeconds: (cpu1.user + cpu1.system) / 1e6,
          ok: r.ok,
          durationSeconds: r.windowSeconds,
          p50Ms: percentile(r.latenciesMs, 50),
          p99Ms: percentile(r.latenciesMs, 99),
          failures: r.errors,
        };
      },
    );
    const h2 = (origin: string) => ({
      url: origin + METHOD_PATH,
      bodyFile,
      clients: H2_CLIENTS,
      streamsPerClient: streams,
      seconds: SECONDS,
      okResponseDataBytes: verified.okDataBytes[origin] ?? 1,
      logFile: path.join(dataDir, "h2load.log"),
    });
    await measure(
      { path: "documents (direct)", generator: `h2load gRPC, ${h2Shape}` },
      { tool: "h2load", path: "documents" },
      () => runH2load(h2(documentsOrigin), WARMUP_SECONDS),
    );
    await measure(
      { path: "gateway, gRPC over h2c", generator: `h2load gRPC, ${h2Shape}` },
      { tool: "h2load", path: "gatewayGrpc" },
      () => runH2load(h2(gateway), WARMUP_SECONDS),
    );
    const script = path.join(root, "bench/lib/wrk-connect.lua");
    const wrk = { connections: CONCURRENCY, threads: 1, seconds: SECONDS, script };
    await measure(
      { path: "gateway, Connect JSON POST, HTTP/1.1", generator: `wrk, ${CONCURRENCY} connections` },
      { tool: "wrk", path: "gatewayConnect" },
      () => runWrk({ ...wrk, url: gateway + METHOD_PATH, method: "POST", body: connectBody }, WARMUP_SECONDS),
    );
    await measure(
      { path: "gateway, Connect JSON GET, HTTP/1.1", generator: `wrk, ${CONCURRENCY} connections` },
      { tool: "wrk", path: "gatewayConnect" },
      () => runWrk({ ...wrk, url: getUrl, method: "GET" }, WARMUP_SECONDS),
    );

    const afterMemory: Record<string, ProcMemory | undefined> = Object.fromEntries(
      Object.entries(mesh.pids).map(([n, p]) => [n, memoryOf(p)]),
    );
    const md = report({ rows, idleMemory, afterMemory, loadBefore, pids: mesh.pids, tools });
    fs.mkdirSync(path.join(root, "bench/results"), { recursive: true });
    fs.writeFileSync(resultsFile(root, "gateway"), md);
    process.stdout.write(md);
    const anyBroken = Object.values(verified.broken).some(Boolean);
    if (anyBroken || rows.some((r) => r.outcome.kind === "error")) exitCode = 1;
  } catch (err) {
    say(`failed: ${(err as Error).stack ?? err}`);
    say(`last mesh log lines:\n${tail(mesh.logFile, 20)}`);
    exitCode = 1;
  } finally {
    direct.close();
    say("stopping the mesh");
    await mesh.stop();
    if (exitCode === 0) fs.rmSync(dataDir, { recursive: true, force: true });
    else say(`kept ${dataDir} (mesh.log) for a look`);
  }
  process.exit(exitCode);
}

function report(input: {
  rows: Row[];
  idleMemory: Record<string, ProcMemory | undefined>;
  afterMemory: Record<string, ProcMemory | undefined>;
  loadBefore: number[];
  pids: Record<string, number>;
  tools: Record<string, string | undefined>;
}): string {
  const { rows } = input;
  const cpus = os.cpus();
  const names = Object.keys(input.pids);
  const lines: string[] = [];
  lines.push("# Gateway benchmark: unary GetDocument", "");
  lines.push(
    `Run ${new Date().toISOString()} on ${cpus.length} x ${cpus[0]?.model?.trim() ?? "cpu"} (nproc ${os.availableParallelism()}), ` +
      `${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}.`,
  );
  lines.push(
    `Mesh warmed up once for ${MESH_WARMUP_SECONDS} s through every path; then each load: ${WARMUP_SECONDS} s warm-up (discarded), ${SECONDS} s measured, ${CONCURRENCY} requests in flight, one seeded document, ` +
      `the mesh as \`npm start\` runs it on ${databaseDescription()}, telemetry without an exporter.`,
  );
  lines.push(
    `Tools: ${input.tools.h2load ? versionOf("h2load", ["--version"]) : "h2load missing"}; ${input.tools.wrk ? versionOf("wrk", ["-v"]).replace(/ Copyright.*/, "") : "wrk missing"}. ` +
      `Load average before the run: ${input.loadBefore.map((l) => l.toFixed(2)).join(" ")}.`,
  );
  lines.push("");
  lines.push(
    `**The load generator runs on the same ${cpus.length} cores as the mesh** (postgres, documents, gateway${names.includes("kafka") ? ", kafka" : ""} are each a Node process), ` +
      "so every figure below is what is left after the generator takes its share: absolute numbers are a floor, the ratios between rows are the point.",
  );
  lines.push("");
  lines.push("| path | load generator | req/s | p50 ms | p99 ms | failed | other load (cores) |");
  lines.push("|---|---|---:|---:|---:|---|---:|");
  for (const r of rows) {
    const o = r.outcome;
    if (o.kind === "measured") {
      const x = o.result;
      lines.push(
        `| ${r.path} | ${r.generator} | ${fmt(x.ok / x.durationSeconds, 0)} | ${fmt(x.p50Ms, 2)} | ${fmt(x.p99Ms, 2)} | ${failuresText(x.failures)} | ${fmt(o.cpu.others, 2)} |`,
      );
    } else {
      lines.push(
        `| ${r.path} | ${r.generator} | - | - | - | ${o.kind}: ${o.reason.replace(/\|/g, "\\|").replace(/\n/g, " ")} | - |`,
      );
    }
  }
  lines.push("");
  lines.push(
    "req/s counts successful calls only: for gRPC via h2load a call counts when it returned HTTP 200 *and* a response message ",
  );
  lines.push(
    "(a failed gRPC call is also HTTP 200, with grpc-status in trailers and no DATA), for wrk when the status was 200.",
  );
  lines.push(
    'Latencies are per call from the generator\'s side. "Other load" is CPU used meanwhile by processes that are neither the mesh',
  );
  lines.push("nor the generator; a row where it is well above 0 was measured on a shared, busy machine.");
  lines.push("");

  const measured = rows.filter(
    (r): r is Row & { outcome: Extract<Outcome, { kind: "measured" }> } => r.outcome.kind === "measured",
  );
  const rate = (pathPrefix: string, gen: string) => {
    const r = measured.find((m) => m.path.startsWith(pathPrefix) && m.generator.startsWith(gen));
    return r ? r.outcome.result.ok / r.outcome.result.durationSeconds : NaN;
  };
  const directH2 = rate("documents", "h2load");
  const gwH2 = rate("gateway, gRPC", "h2load");
  const gwPost = rate("gateway, Connect JSON POST", "wrk");
  const directGrpcJs = rate("documents", "grpc-js");
  const ratios: string[] = [];
  if (Number.isFinite(directH2) && Number.isFinite(gwH2))
    ratios.push(`gateway gRPC / direct gRPC (both h2load): ${fmt(gwH2 / directH2, 2)}`);
  if (Number.isFinite(directH2) && Number.isFinite(gwPost))
    ratios.push(`gateway Connect JSON POST / direct gRPC (h2load): ${fmt(gwPost / directH2, 2)}`);
  if (Number.isFinite(directH2) && Number.isFinite(directGrpcJs))
    ratios.push(`grpc-js generator / h2load generator, same target: ${fmt(directGrpcJs / directH2, 2)}`);
  if (ratios.length) lines.push(`Throughput ratios: ${ratios.join("; ")}.`, "");
  // The service's own cost per call, independent of how much of the machine the rest took.
  const perCall = measured
    .filter((r) => r.path.startsWith("documents") && r.outcome.cpu.perProcess.documents !== undefined)
    .map((r) => {
      const x = r.outcome.result;
      const ms = (r.outcome.cpu.perProcess.documents! * 1000) / (x.ok / x.durationSeconds);
      return `${fmt(ms, 3)} ms with ${r.generator.split(",")[0]}`;
    });
  if (perCall.length)
    lines.push(`documents CPU per direct GetDocument (its cores / req/s): ${perCall.join("; ")}.`, "");

  lines.push(
    `CPU while each load ran, in cores (warm-up included; "others" is the machine's busy time not spent by the mesh or the generator):`,
    "",
  );
  lines.push(
    `| path | load generator | ${names.join(" | ")} | generator | others | machine busy (of ${cpus.length}) |`,
  );
  lines.push(`|---|---|${names.map(() => "---:").join("|")}|---:|---:|---:|`);
  for (const r of measured) {
    const c = r.outcome.cpu;
    lines.push(
      `| ${r.path} | ${r.generator} | ${names.map((n) => fmt(c.perProcess[n] ?? NaN, 2)).join(" | ")} | ${fmt(c.generator, 2)} | ${fmt(c.others, 2)} | ${fmt(c.machine, 2)} |`,
    );
  }
  const noisy = measured.filter((r) => r.outcome.cpu.others > 0.2);
  if (noisy.length) {
    lines.push(
      "",
      `**Other work shared the machine** (up to ${fmt(Math.max(...noisy.map((r) => r.outcome.cpu.others)), 2)} cores in the "others" column): ` +
        `these figures understate what the mesh can do (the harness waited up to ${QUIET_WAIT_SECONDS} s per row for an idle machine); ` +
        "rerun on a quiet machine before comparing with another run.",
    );
  }
  lines.push("");
  lines.push("Memory of each mesh process (VmRSS from /proc/<pid>/status):", "");
  lines.push("| process | idle, before load | after all loads | peak (VmHWM) |");
  lines.push("|---|---:|---:|---:|");
  for (const n of names) {
    lines.push(
      `| ${n} | ${mib(input.idleMemory[n]?.rssBytes)} | ${mib(input.afterMemory[n]?.rssBytes)} | ${mib(input.afterMemory[n]?.peakBytes)} |`,
    );
  }
  lines.push("");
  lines.push(
    "Rerun: `node --import tsx bench/gateway.ts` (needs `apt-get install nghttp2-client wrk` for the h2load and wrk rows; " +
      "BENCH_SECONDS, BENCH_WARMUP_SECONDS, BENCH_MESH_WARMUP_SECONDS, BENCH_CONCURRENCY, BENCH_H2_CLIENTS change the shape; BENCH_QUIET_WAIT_SECONDS bounds the wait for an idle machine).",
  );
  return lines.join("\n") + "\n";
}

void main();
