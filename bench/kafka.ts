/**
 * Embedded Kafka broker benchmark: `node --import tsx bench/kafka.ts`.
 * The broker runs as its own process (as with `npm run broker`) so its RSS is measured alone.
 * Writes bench/results/kafka.md. BENCH_MESSAGES changes the throughput run size; BENCH_BROKER_MEMORY=1
 * runs the broker without a data dir, to separate disk cost from protocol cost.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Kafka, logLevel, Partitioners } from "kafkajs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const MESSAGE_BYTES = 1024;
const BATCH = 100;
const THROUGHPUT_MESSAGES = Number(process.env.BENCH_MESSAGES ?? 100_000);
const IN_FLIGHT_SENDS = 8;
const LATENCY_RATE = 1000; // messages per second
const LATENCY_SECONDS = 5;
const KCAT_MESSAGES = 100_000;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

async function startBrokerProcess(dataDir: string): Promise<{ child: ChildProcess; address: string }> {
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "deploy/embedded/kafka/main.ts",
      "--port",
      "0",
      ...(process.env.BENCH_BROKER_MEMORY ? ["--memory"] : ["--data-dir", dataDir]),
      "--log-level",
      "warn",
    ],
    {
      cwd: root,
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  const address = await new Promise<string>((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /^kafka (\S+)$/m.exec(out);
      if (m) resolve(m[1]!);
    });
    child.on("exit", (code) => reject(new Error(`broker exited with ${code}`)));
  });
  return { child, address };
}

/** User + system CPU seconds the process has used so far. */
function cpuSecondsOf(pid: number): number {
  try {
    const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return NaN;
  }
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function kafkajsThroughput(kafka: Kafka): Promise<{ produceSeconds: number; endToEndSeconds: number }> {
  const topic = "bench-throughput";
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 1 }] });
  await admin.disconnect();
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  const consumer = kafka.consumer({ groupId: "bench-throughput-g", maxWaitTimeInMs: 100, maxBytes: 10 * 1024 * 1024 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  let consumed = 0;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  await consumer.run({
    eachBatch: async ({ batch }) => {
      consumed += batch.messages.length;
      if (consumed >= THROUGHPUT_MESSAGES) resolveDone();
    },
  });
  const payload = Buffer.alloc(MESSAGE_BYTES, "m");
  const messages = Array.from({ length: BATCH }, () => ({ value: payload }));
  const start = performance.now();
  let sent = 0;
  const sender = async (): Promise<void> => {
    while (sent < THROUGHPUT_MESSAGES) {
      sent += BATCH;
      await producer.send({ topic, acks: -1, messages });
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT_SENDS }, sender));
  const produceSeconds = (performance.now() - start) / 1000;
  await done;
  const endToEndSeconds = (performance.now() - start) / 1000;
  await consumer.disconnect();
  await producer.disconnect();
  return { produceSeconds, endToEndSeconds };
}

async function kafkajsLatency(kafka: Kafka): Promise<number[]> {
  const topic = "bench-latency";
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 1 }] });
  await admin.disconnect();
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  const consumer = kafka.consumer({ groupId: "bench-latency-g", maxWaitTimeInMs: 500 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const latencies: number[] = [];
  const total = LATENCY_RATE * LATENCY_SECONDS;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  await consumer.run({
    eachMessage: async ({ message }) => {
      latencies.push(performance.now() - Number(message.value!.toString("utf8", 0, 20).trim()));
      if (latencies.length >= total) resolveDone();
    },
  });
  await sleep(500); // let the consumer join before the clock starts
  const perTick = LATENCY_RATE / 100; // ten-millisecond ticks
  const pad = "p".repeat(MESSAGE_BYTES - 20);
  const start = performance.now();
  const pending: Promise<unknown>[] = [];
  for (let tick = 0; tick < LATENCY_SECONDS * 100; tick++) {
    const due = start + tick * 10;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    // Each message is its own request: latency includes one produce round trip with fsync.
    for (let i = 0; i < perTick; i++) {
      pending.push(
        producer.send({ topic, acks: -1, messages: [{ value: performance.now().toFixed(3).padStart(20) + pad }] }),
      );
    }
  }
  await Promise.all(pending);
  await done;
  await consumer.disconnect();
  await producer.disconnect();
  return latencies.sort((a, b) => a - b);
}

function kcatProduce(address: string, file: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const p = spawn("kcat", ["-b", address, "-P", "-t", "bench-kcat", "-l", file], {
      stdio: ["ignore", "ignore", "inherit"],
    });
    p.on("error", reject);
    p.on("exit", (code) =>
      code === 0 ? resolve((performance.now() - start) / 1000) : reject(new Error(`kcat exited ${code}`)),
    );
  });
}

/** The same bytes over a plain loopback TCP connection to another process that only counts them. */
async function tcpCeiling(totalBytes: number): Promise<number> {
  const sinkCode = `
    const net = require("node:net");
    const total = ${totalBytes};
    const srv = net.createServer((s) => { let n = 0; s.on("data", (d) => { n += d.length; if (n >= total) s.end("done"); }); });
    srv.listen(0, "127.0.0.1", () => console.log(srv.address().port));`;
  const sink = spawn(process.execPath, ["-e", sinkCode], { stdio: ["ignore", "pipe", "inherit"] });
  const port = await new Promise<number>((resolve) =>
    sink.stdout!.once("data", (d: Buffer) => resolve(Number(d.toString().trim()))),
  );
  const chunk = Buffer.alloc(BATCH * MESSAGE_BYTES, "t");
  const seconds = await new Promise<number>((resolve, reject) => {
    const s = net.connect({ host: "127.0.0.1", port }, async () => {
      const start = performance.now();
      s.on("data", () => {
        resolve((performance.now() - start) / 1000);
        s.destroy();
      });
      let sent = 0;
      while (sent < totalBytes) {
        sent += chunk.length;
        if (!s.write(chunk)) await new Promise((r) => s.once("drain", r));
      }
    });
    s.on("error", reject);
  });
  sink.kill();
  return seconds;
}

async function main(): Promise<void> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "medmesh-kafka-bench-"));
  const { child, address } = await startBrokerProcess(dataDir);
  const pid = child.pid!;
  await sleep(300);
  const idleRss = rssOf(pid);
  let peakRss = idleRss;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, rssOf(pid))), 100);
  const kafka = new Kafka({ clientId: "bench", brokers: [address], logLevel: logLevel.NOTHING });

  try {
    const cpuBefore = cpuSecondsOf(pid);
    const tp = await kafkajsThroughput(kafka);
    const brokerCpuShare = (cpuSecondsOf(pid) - cpuBefore) / tp.endToEndSeconds;
    const lat = await kafkajsLatency(kafka);

    let kcatSeconds: number | null = null;
    if (spawnSync("kcat", ["-V"]).status === 0) {
      const file = path.join(dataDir, "kcat-input.txt");
      const line = "k".repeat(MESSAGE_BYTES - 1) + "\n";
      fs.writeFileSync(file, line.repeat(KCAT_MESSAGES));
      kcatSeconds = await kcatProduce(address, file);
    }
    const ceiling = await tcpCeiling(THROUGHPUT_MESSAGES * MESSAGE_BYTES);
    clearInterval(sampler);

    const mb = (n: number): number => (n * MESSAGE_BYTES) / 1e6;
    const rows: [string, string, string][] = [
      [
        "kafkajs produce (acks=-1, 1 KB x 100 per send, 8 sends in flight)",
        `${Math.round(THROUGHPUT_MESSAGES / tp.produceSeconds)} msg/s`,
        `${(mb(THROUGHPUT_MESSAGES) / tp.produceSeconds).toFixed(1)} MB/s`,
      ],
      [
        "kafkajs produce -> consume end to end (same run)",
        `${Math.round(THROUGHPUT_MESSAGES / tp.endToEndSeconds)} msg/s`,
        `${(mb(THROUGHPUT_MESSAGES) / tp.endToEndSeconds).toFixed(1)} MB/s`,
      ],
      [
        `kafkajs end-to-end latency at ${LATENCY_RATE} msg/s (1 KB, 1 message per send)`,
        `p50 ${percentile(lat, 50).toFixed(2)} ms`,
        `p99 ${percentile(lat, 99).toFixed(2)} ms (max ${lat[lat.length - 1]!.toFixed(1)} ms, n=${lat.length})`,
      ],
      kcatSeconds === null
        ? ["kcat -P 100k x 1 KB", "kcat not installed", "-"]
        : [
            "kcat -P 100k x 1 KB (librdkafka defaults, acks=all)",
            `${Math.round(KCAT_MESSAGES / kcatSeconds)} msg/s`,
            `${(mb(KCAT_MESSAGES) / kcatSeconds).toFixed(1)} MB/s`,
          ],
      [
        "plain TCP loopback, same bytes, to a counting process (ceiling)",
        `${Math.round(THROUGHPUT_MESSAGES / ceiling)} msg/s equiv.`,
        `${(mb(THROUGHPUT_MESSAGES) / ceiling).toFixed(1)} MB/s`,
      ],
      [
        "broker CPU during the kafkajs throughput run (share of one core)",
        `${Math.round(brokerCpuShare * 100)} %`,
        "-",
      ],
      [
        "broker RSS idle / peak under this load",
        `${(idleRss / 1048576).toFixed(0)} MiB`,
        `${(peakRss / 1048576).toFixed(0)} MiB`,
      ],
    ];
    const md = [
      "# Embedded Kafka broker benchmark",
      "",
      `Run ${new Date().toISOString()} on ${os.cpus().length} x ${os.cpus()[0]?.model ?? "cpu"}, Node ${process.version}, ${os.platform()} ${os.release()}.`,
      `Broker in its own process with a data dir on ${os.tmpdir()} (acks=-1 waits for fdatasync). Clients in the bench process.`,
      `${THROUGHPUT_MESSAGES} messages for throughput; ${LATENCY_RATE * LATENCY_SECONDS} for latency.`,
      "",
      "| measurement | rate / p50 | MB/s / p99 |",
      "|---|---|---|",
      ...rows.map((r) => `| ${r.join(" | ")} |`),
      "",
    ].join("\n");
    fs.mkdirSync(path.join(root, "bench/results"), { recursive: true });
    fs.writeFileSync(path.join(root, "bench/results/kafka.md"), md);
    process.stdout.write(md);
  } finally {
    clearInterval(sampler);
    child.kill("SIGTERM");
    await new Promise((r) => child.once("exit", r));
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

await main();
