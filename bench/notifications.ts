/**
 * Notifications on their own: `npm run bench:notifications` (node --import tsx bench/notifications.ts).
 * One notifications service in this process (embedded PGlite, or DATABASE_URL; REDIS_URL for the
 * Redis bus), the embedded broker, a real identity, an SMTP server that counts what it receives.
 * BENCH_NOTIFY_STREAMS (1000) users each hold a Subscribe stream. Measures:
 *  - fan-out: announcements to all of them, notifications/s received across the streams;
 *  - latency: NewSignIn events published on user.events at a paced rate, p50/p99 from publish to
 *    the notification arriving on the user's stream; and the issue's own measure, DocumentProcessed
 *    published on document.events to the uploader's stream, through a real documents service
 *    (the notifier asks it for the title and uploader of each document);
 *  - memory per idle subscriber: the server's heap growth / streams, with the streams held by a child
 *    process (bench/lib/idle-subscribers.ts), and client and server together in one process;
 *  - email: welcome mails for BENCH_NOTIFY_MAILS (500) registrations, messages/s into the SMTP server.
 * Writes bench/results/notifications.md. Run it under `flock /tmp/bench.lock`.
 */
import { spawn } from "node:child_process";
import { setMaxListeners } from "node:events";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { randomBytes, randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Kafka, logLevel } from "kafkajs";
import { SMTPServer } from "smtp-server";
import { startBroker } from "../deploy/embedded/kafka/index.js";
import { Role } from "../gen/medmesh/access/v1/access_pb.js";
import { DocumentProcessedSchema } from "../gen/medmesh/events/v1/document_events_pb.js";
import { NewSignInSchema, RoleChangedSchema, UserRegisteredSchema } from "../gen/medmesh/events/v1/user_events_pb.js";
import { NotificationService, NotificationType } from "../gen/medmesh/notifications/v1/notifications_pb.js";
import { contractEvent, newEvent, toKafkaMessage } from "../platform/events/index.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { startDocuments } from "../services/documents/main.js";
import { startNotifications } from "../services/notifications/main.js";
import { personaClients, tinyPdf, uploadOf } from "../test/support/documents.js";
import { startTestIdentity } from "../test/support/identity.js";
import { intFromEnv } from "./lib/env.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const STREAMS = intFromEnv("BENCH_NOTIFY_STREAMS", 1000, 1, 20_000);
// 20 announcements (20,000 deliveries, about 3 s): five ended within a second and measured the
// first pages' warm-up (4,690/s against 7,232/s sustained, one quiet run each).
const ROUNDS = intFromEnv("BENCH_NOTIFY_ROUNDS", 20, 1, 100);
const LATENCY_EVENTS = intFromEnv("BENCH_NOTIFY_LATENCY_EVENTS", 300, 10, 100_000);
const LATENCY_RATE = intFromEnv("BENCH_NOTIFY_LATENCY_RATE", 50, 1, 10_000);
const MAILS = intFromEnv("BENCH_NOTIFY_MAILS", 500, 1, 100_000);
const DOCUMENTS = intFromEnv("BENCH_NOTIFY_DOCUMENTS", 20, 1, 1000);

const say = (m: string) => process.stderr.write(`${m}\n`);
const gc = () => (globalThis as { gc?: () => void }).gc?.();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};
async function until(what: string, ok: () => boolean, timeoutMs = 300_000) {
  const end = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await sleep(5);
  }
}

async function main() {
  const broker = await startBroker({ port: 0, dataDir: null, logLevel: "silent" });
  let mails = 0;
  let lastMailAt = 0;
  const smtp = new SMTPServer({
    authOptional: true,
    disabledCommands: ["STARTTLS", "AUTH"],
    logger: false,
    onData(stream, _s, cb) {
      stream.resume();
      stream.on("end", () => {
        mails++;
        lastMailAt = performance.now();
        cb();
      });
    },
  });
  await new Promise<void>((r) => smtp.listen(0, "127.0.0.1", () => r()));
  const smtpPort = (smtp.server.address() as { port: number }).port;
  const key = `mmk_${randomBytes(32).toString("base64url")}`;
  const identity = await startTestIdentity({
    KAFKA_BROKERS: broker.address,
    IDENTITY_BOOTSTRAP_API_KEYS: `notifications=${key}`,
  });
  const db = process.env.DATABASE_URL ? { DATABASE_URL: process.env.DATABASE_URL } : { MEDMESH_DATA_DIR: "memory://" };
  const blobDir = fs.mkdtempSync(path.join(os.tmpdir(), "medmesh-bench-notify-"));
  const documents = await startDocuments({
    ...db,
    LOG_LEVEL: "error",
    DOCUMENTS_PORT: "0",
    DOCUMENTS_DB_SCHEMA: `documents_b${randomBytes(3).toString("hex")}`,
    IDENTITY_TARGET: identity.target,
    KAFKA_BROKERS: broker.address,
    BLOB_DIR: blobDir,
  });
  const svc = await startNotifications(
    {
      ...db,
      ...(process.env.REDIS_URL ? { REDIS_URL: process.env.REDIS_URL } : {}),
      LOG_LEVEL: "error",
      NOTIFICATIONS_DB_SCHEMA: `notifications_b${randomBytes(3).toString("hex")}`,
      NOTIFICATIONS_PORT: "0",
      KAFKA_BROKERS: broker.address,
      DOCUMENTS_TARGET: `127.0.0.1:${documents.port}`,
      IDENTITY_TARGET: identity.target,
      NOTIFICATIONS_API_KEY: key,
      SMTP_URL: `smtp://127.0.0.1:${smtpPort}`,
      NOTIFICATIONS_POLL_MS: "200",
    },
    {
      // A user per stream without signing 1,000 people in: the bench names the caller.
      resolvePrincipal: async (h) => {
        const u = h.get("x-bench-user");
        return u ? { subject: u, role: u === "admin" ? Role.ADMIN : Role.DOCTOR, kind: "user" } : undefined;
      },
    },
  );
  const target = `127.0.0.1:${svc.port}`;
  const kafka = new Kafka({ brokers: [broker.address], clientId: "bench", logLevel: logLevel.NOTHING });
  const producer = kafka.producer();
  await producer.connect();
  const publish = async (events: ReturnType<typeof newEvent>[]) => {
    for (let i = 0; i < events.length; i += 500)
      await producer.send({ topic: "user.events", messages: events.slice(i, i + 500).map(toKafkaMessage) });
  };
  const users = Array.from(
    { length: STREAMS },
    (_, i) => `bench-${String(i).padStart(5, "0")}-${randomUUID().slice(0, 8)}`,
  );

  // Recipients: each user becomes a known doctor (no address: their mail is skipped, not sent).
  say(`making ${STREAMS} recipients`);
  await publish(
    users.map((u) =>
      newEvent(
        contractEvent(
          RoleChangedSchema,
          { userId: u, oldRole: Role.STUDENT, newRole: Role.DOCTOR, changedBy: "bench", changeTime: timestampNow() },
          { key: u, source: "/bench" },
        ),
      ),
    ),
  );

  // The server alone: the same streams held by another process, this one's heap weighed with
  // them open and after they are gone.
  say(`server memory: ${STREAMS} idle streams from a child process`);
  gc();
  await sleep(500);
  gc();
  const serverBefore = process.memoryUsage().heapUsed;
  const holder = spawn(
    process.execPath,
    ["--import", "tsx", path.join(root, "bench/lib/idle-subscribers.ts"), `127.0.0.1:${svc.port}`, users.join(",")],
    { cwd: root, stdio: ["ignore", "pipe", "inherit"] },
  );
  await new Promise<void>((resolve, reject) => {
    holder.stdout!.on("data", (d: Buffer) => d.toString().includes("open") && resolve());
    holder.once("exit", (code) => reject(new Error(`the stream holder exited (${code})`)));
  });
  await until("every stream open", () => svc.feed.subscribers() >= STREAMS);
  await sleep(1000);
  gc();
  await sleep(200);
  gc();
  const serverPerSubscriber = (process.memoryUsage().heapUsed - serverBefore) / STREAMS;
  holder.kill("SIGKILL");
  await until("the held streams gone", () => svc.feed.subscribers() === 0, 60_000);

  gc();
  await sleep(500);
  gc();
  const heapBefore = process.memoryUsage().heapUsed;
  const rssBefore = process.memoryUsage().rss;
  const client = createMeshClient(NotificationService, target, { defaultTimeoutMs: 600_000 });
  const received = new Map<string, number>();
  let total = 0;
  const sentAt = new Map<string, number>();
  const latencies: number[] = [];
  const abort = new AbortController();
  // One signal ends every stream of the bench: a listener per stream is expected, not a leak.
  setMaxListeners(0, abort.signal);
  const streams = users.map(async (u) => {
    try {
      for await (const r of client.subscribe(
        {},
        { headers: { "x-bench-user": u }, signal: abort.signal, timeoutMs: 3_600_000 },
      )) {
        total++;
        received.set(u, (received.get(u) ?? 0) + 1);
        const session = r.notification?.attributes.session_id;
        const t0 = session && sentAt.get(session);
        if (t0) latencies.push(performance.now() - t0);
      }
    } catch {
      // ended by the bench
    }
  });
  say(`opening ${STREAMS} streams`);
  await until("every stream open", () => svc.feed.subscribers() >= STREAMS);
  // Drain the role-changed notices each stream starts with.
  await until("the backlog", () => total >= STREAMS, 120_000);
  await sleep(1000);
  gc();
  await sleep(200);
  gc();
  const heapIdle = process.memoryUsage().heapUsed;
  const rssIdle = process.memoryUsage().rss;
  const perSubscriber = (heapIdle - heapBefore) / STREAMS;

  say(`fan-out: ${ROUNDS} announcements to ${STREAMS} streams`);
  const admin = { headers: { "x-bench-user": "admin" } };
  const startTotal = total;
  const t0 = performance.now();
  for (let i = 0; i < ROUNDS; i++) await client.sendAnnouncement({ title: `Bench ${i}`, body: "fan-out" }, admin);
  await until("every announcement on every stream", () => total - startTotal >= ROUNDS * STREAMS);
  const fanoutMs = performance.now() - t0;
  const fanoutRate = (ROUNDS * STREAMS) / (fanoutMs / 1000);

  say(`latency: ${LATENCY_EVENTS} sign-ins at ${LATENCY_RATE}/s`);
  const gap = 1000 / LATENCY_RATE;
  const start = performance.now();
  for (let i = 0; i < LATENCY_EVENTS; i++) {
    const u = users[i % users.length]!;
    const session = randomUUID();
    const e = newEvent(
      contractEvent(
        NewSignInSchema,
        { userId: u, sessionId: session, clientAddress: "192.0.2.1", signInTime: timestampNow() },
        { key: u, source: "/bench" },
      ),
    );
    sentAt.set(session, performance.now());
    await producer.send({ topic: "user.events", messages: [toKafkaMessage(e)] });
    const next = start + (i + 1) * gap;
    if (next > performance.now()) await sleep(next - performance.now());
  }
  await until("every sign-in notice", () => latencies.length >= LATENCY_EVENTS);

  // DocumentProcessed → the uploader's stream. A real upload makes each document (documents
  // knows its uploader and title); the events are published by the bench, as processing would,
  // several per document so that a few uploads carry the whole paced series.
  say(`document latency: ${DOCUMENTS} uploads, ${LATENCY_EVENTS} DocumentProcessed at ${LATENCY_RATE}/s`);
  const docs = personaClients(
    () => identity,
    () => `127.0.0.1:${documents.port}`,
    120_000,
  );
  const uploader = await docs.as("doctor");
  const uploaderId = await identity.userId("doctor");
  const documentIds: string[] = [];
  for (let i = 0; i < DOCUMENTS; i++) {
    const title = `Bench paper ${i}`;
    const { document } = await uploader.upload(uploadOf(title, tinyPdf(title)));
    documentIds.push(document!.id);
  }
  docs.closeAll();
  // Per document, the publish times in order: one document's events share a partition (its id is
  // the key), so they are consumed, and reach the stream, in the order they were published.
  const publishedAt = new Map<string, number[]>();
  const docLatencies: number[] = [];
  const docStream = (async () => {
    try {
      for await (const r of client.subscribe(
        {},
        { headers: { "x-bench-user": uploaderId }, signal: abort.signal, timeoutMs: 3_600_000 },
      )) {
        const n = r.notification;
        if (n?.type !== NotificationType.DOCUMENT_PROCESSED) continue;
        const t0 = publishedAt.get(n.attributes.document_id ?? "")?.shift();
        if (t0 !== undefined) docLatencies.push(performance.now() - t0);
      }
    } catch {
      // ended by the bench
    }
  })();
  await until("the uploader's stream", () => svc.feed.subscribers() > STREAMS);
  await sleep(200);
  const docStart = performance.now();
  for (let i = 0; i < LATENCY_EVENTS; i++) {
    const documentId = documentIds[i % documentIds.length]!;
    const e = newEvent(
      contractEvent(
        DocumentProcessedSchema,
        { documentId, version: 1, mimeType: "application/pdf", pages: 1, wordCount: 120, language: "en" },
        { key: documentId, source: "/bench" },
      ),
    );
    const times = publishedAt.get(documentId) ?? [];
    publishedAt.set(documentId, times);
    times.push(performance.now());
    await producer.send({ topic: "document.events", messages: [toKafkaMessage(e)] });
    const next = docStart + (i + 1) * gap;
    if (next > performance.now()) await sleep(next - performance.now());
  }
  await until("every DocumentProcessed notice", () => docLatencies.length >= LATENCY_EVENTS);

  say(`email: ${MAILS} registrations with an address`);
  const mailsBefore = mails;
  const m0 = performance.now();
  await publish(
    Array.from({ length: MAILS }, (_, i) => {
      const u = randomUUID();
      return newEvent(
        contractEvent(
          UserRegisteredSchema,
          {
            userId: u,
            email: `bench${i}@example.org`,
            username: `b${i}`,
            firstName: "Bench",
            role: Role.STUDENT,
            registerTime: timestampNow(),
          },
          { key: u, source: "/bench" },
        ),
      );
    }),
  );
  await until("every welcome mail", () => mails - mailsBefore >= MAILS);
  const mailRate = MAILS / ((lastMailAt - m0) / 1000);

  abort.abort();
  await Promise.all([...streams, docStream]);
  client.close();
  await producer.disconnect();
  await svc.stop();
  await documents.stop();
  await identity.stop();
  await new Promise<void>((r) => smtp.close(() => r()));
  await broker.stop();
  fs.rmSync(blobDir, { recursive: true, force: true });

  const backend = process.env.DATABASE_URL ? "PostgreSQL server" : "embedded PGlite";
  const bus = process.env.REDIS_URL ? "Redis pub/sub" : "in process";
  const lines = [
    `# Notifications benchmark`,
    ``,
    `${new Date().toISOString().slice(0, 10)}, ${backend}, bus ${bus}, ${STREAMS} Subscribe streams, node ${process.version}, on a 2-core machine, load average ${os.loadavg()[0]!.toFixed(1)} at the start of the report (other work on the cores lowers every figure).`,
    ``,
    `| measure | figure | target |`,
    `|---|---|---|`,
    `| in-app fan-out: notifications received across ${STREAMS} streams (${ROUNDS} announcements to all) | ${Math.round(fanoutRate)} /s (${ROUNDS * STREAMS} in ${Math.round(fanoutMs)} ms) | ≥ 5,000 /s |`,
    `| DocumentProcessed published on document.events → on the uploader's stream (GetDocument to a real documents service on the way), ${LATENCY_EVENTS} at ${LATENCY_RATE}/s over ${DOCUMENTS} documents | p50 ${quantile(docLatencies, 0.5).toFixed(1)} ms, p99 ${quantile(docLatencies, 0.99).toFixed(1)} ms, max ${Math.max(...docLatencies).toFixed(1)} ms | p99 ≤ 500 ms |`,
    `| NewSignIn published on user.events → on the user's stream, ${LATENCY_EVENTS} at ${LATENCY_RATE}/s | p50 ${quantile(latencies, 0.5).toFixed(1)} ms, p99 ${quantile(latencies, 0.99).toFixed(1)} ms, max ${Math.max(...latencies).toFixed(1)} ms | |`,
    `| memory per idle subscriber, the server alone (its heap growth / streams, held by another process) | ${(serverPerSubscriber / 1024).toFixed(1)} KiB | ≤ 20 KiB |`,
    `| memory per idle subscriber, client and server in one process (heap growth / streams) | ${(perSubscriber / 1024).toFixed(1)} KiB (RSS growth ${((rssIdle - rssBefore) / STREAMS / 1024).toFixed(1)} KiB) | |`,
    `| email: welcome mails for ${MAILS} registrations into an SMTP server | ${Math.round(mailRate)} messages/s | |`,
    ``,
    `The DocumentProcessed row is the target's measure: each event is consumed, its document asked of`,
    `documents by GetDocument (with the service's token), the notification and deliveries written in one`,
    `transaction with the inbox, published on the bus and streamed. The NewSignIn row is the same path`,
    `without the GetDocument call.`,
    ``,
  ];
  const out = path.join(
    root,
    "bench/results",
    process.env.DATABASE_URL ? "notifications-postgres.md" : "notifications.md",
  );
  fs.writeFileSync(out, lines.join("\n"));
  process.stdout.write(lines.join("\n"));
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`bench failed: ${(err as Error).stack}\n`);
  process.exit(1);
});
