import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { Kafka, logLevel } from "kafkajs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  DocumentService,
  DocumentType,
  FailureReason,
  ProcessingStatus,
  type Document,
  type UploadRequest,
} from "../gen/medmesh/documents/v1/documents_pb.js";
import { DocumentFailedSchema, DocumentProcessedSchema } from "../gen/medmesh/events/v1/document_events_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { encryptedPdf, onePagePdf, TEXT_NOTES } from "./fixtures/documents/make-fixtures.js";
import {
  freePort,
  freeMeshPorts,
  processesWithEnv,
  startEmbeddedMesh,
  type EmbeddedMesh,
} from "./support/embedded-mesh.js";

/**
 * Chaos: uploads keep flowing through the gateway while documents, the processing worker, the
 * broker and the embedded Postgres are each SIGKILLed in turn and brought back by the launcher's
 * supervisor. Afterwards every upload the gateway acknowledged must reach a terminal status, with
 * exactly one outcome for its version: one terminal entry in its status history, one outcome
 * recorded, one outcome event id on `document.events` (copies of that event under the same id are
 * at-least-once delivery, not a duplicate).
 *
 * The mesh is the one `npm start` runs, as a child process in a process group of its own.
 */

type Docs = ReturnType<typeof createMeshClient<typeof DocumentService>>;

const KILLS = ["documents", "processing", "kafka", "postgres"] as const;
const UPLOADERS = 3;
// INDEXED follows PROCESSED once search has the version; for the pipeline both mean processed.
const TERMINAL = new Set([ProcessingStatus.PROCESSED, ProcessingStatus.INDEXED, ProcessingStatus.FAILED]);
const asProcessed = (s: ProcessingStatus) => (s === ProcessingStatus.INDEXED ? ProcessingStatus.PROCESSED : s);

interface Acked {
  id: string;
  version: number;
  kind: "pdf" | "text" | "encrypted";
  /** The kill the upload happened after ("" before the first). */
  after: string;
}

/** Small, distinct files; one in seven is one the worker must refuse, so both outcomes occur. */
function fixture(n: number): { kind: Acked["kind"]; bytes: Buffer; filename: string; mime: string } {
  if (n % 7 === 6)
    return { kind: "encrypted", bytes: encryptedPdf(), filename: `locked-${n}.pdf`, mime: "application/pdf" };
  if (n % 2 === 0) return { kind: "pdf", bytes: onePagePdf(n), filename: `case-${n}.pdf`, mime: "application/pdf" };
  const text = `${TEXT_NOTES}\r\nFollow-up note ${n}: blood pressure controlled on lisinopril.\r\n`;
  return { kind: "text", bytes: Buffer.from(text), filename: `notes-${n}.txt`, mime: "text/plain" };
}

async function* uploadOf(title: string, f: ReturnType<typeof fixture>): AsyncIterable<UploadRequest> {
  yield {
    part: {
      case: "header",
      value: {
        document: { title, documentType: DocumentType.CASE_REPORT },
        filename: f.filename,
        declaredMimeType: f.mime,
      },
    },
  } as UploadRequest;
  yield { part: { case: "chunk", value: f.bytes } } as unknown as UploadRequest;
}

async function until(what: string, check: () => Promise<boolean> | boolean, timeoutMs: number, everyMs = 250) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** The launcher's own log lines with this message, parsed. */
function launcherLines(output: string, msg: string): Array<Record<string, unknown>> {
  return output
    .split("\n")
    .filter((l) => l.startsWith("{") && l.includes('"service":"launcher"') && l.includes(`"msg":"${msg}"`))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe("chaos: components killed while uploads flow", () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-chaos-"));
  const logFile = path.join(os.tmpdir(), `medmesh-chaos-${process.pid}.log`);
  /** Set once every assertion held; otherwise the mesh's log is kept for whoever reads the failure. */
  let passed = false;
  let mesh: EmbeddedMesh;
  let gateway: string;
  let docs: Docs;
  let kafka: Kafka;

  /** Each component's current pid: the ready line's, replaced by every restart since. */
  function currentPids(): Record<string, number> {
    const pids = { ...(launcherLines(mesh.output(), "mesh ready")[0]!.pids as Record<string, number>) };
    for (const r of launcherLines(mesh.output(), "component restarted")) pids[r.component as string] = r.pid as number;
    return pids;
  }

  const ready = async () =>
    (await fetch(`${gateway}/readyz`, { signal: AbortSignal.timeout(5_000) }).catch(() => undefined))?.status === 200;

  beforeAll(async () => {
    delete process.env.DATABASE_URL;
    mesh = await startEmbeddedMesh(
      {
        MEDMESH_DATA_DIR: dataDir,
        DATABASE_URL: "",
        KAFKA_BROKERS: "",
        LOG_LEVEL: "warn",
        ...(await freeMeshPorts()),
        // The test polls every acknowledged document; the default read budget is for people.
        RATE_LIMITS: "read=2000:1000,write=60:20,auth=10:0.2,upload=20:5",
        // The reconciler (where documents has one) looks for stuck versions often and soon, so a
        // version left behind by a kill is re-driven within the test's bounded wait.
        DOCUMENTS_RECONCILE_INTERVAL_MS: "2000",
        DOCUMENTS_STUCK_AFTER_MS: "15000",
        // A short retry budget for the worker, so an outage of a few seconds outlasts it on any
        // machine however fast the killed component comes back; transient retries (where they
        // are unlimited) are capped low so the pipeline resumes soon after the outage.
        PROCESSING_RETRY_BASE_MS: "250",
        PROCESSING_RETRY_MAX_MS: "2000",
      },
      240_000,
      { ownProcessGroup: true },
    );
    gateway = mesh.endpoints.get("gateway")!;
    kafka = new Kafka({ brokers: [mesh.endpoints.get("kafka")!], logLevel: logLevel.NOTHING });
    const identity = async (method: string, body: unknown) => {
      const res = await fetch(`${gateway}/medmesh.identity.v1.IdentityService/${method}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      expect(res.status, `${method}: ${await res.clone().text()}`).toBe(200);
      return (await res.json()) as Record<string, any>;
    };
    // The bootstrap admin may upload.
    await identity("Register", {
      email: "admin@medmesh.local",
      username: "admin",
      password: "an admin password",
      firstName: "Ad",
      lastName: "Min",
    });
    const login = await identity("Login", { login: "admin", password: "an admin password" });
    docs = createMeshClient(DocumentService, gateway.replace("http://", ""), {
      headers: { authorization: `Bearer ${login.tokens.accessToken}` },
      defaultTimeoutMs: 20_000,
    });
  }, 300_000);

  afterAll(async () => {
    docs?.close();
    if (mesh) {
      if (!passed) {
        writeFileSync(logFile, mesh.output());
        console.log(`mesh log: ${logFile}`);
      }
      if (mesh.child.exitCode === null) {
        const stopped = mesh.stop();
        await Promise.race([stopped, sleep(40_000)]);
      }
    }
    for (const pid of processesWithEnv(dataDir)) process.kill(pid, "SIGKILL");
    rmSync(dataDir, { recursive: true, force: true });
  }, 60_000);

  it("every acknowledged upload reaches one terminal status, none twice, whatever was killed", async () => {
    const acked: Acked[] = [];
    const refused = new Map<string, number>();
    const refusedFirst = new Map<string, string>();
    let attempts = 0;
    let phase = "";
    let flowing = true;
    let next = 0;

    // A small steady flow: each uploader sends one file, waits a little, and goes on; a failed
    // upload (expected while something is down) is counted and the uploader carries on.
    const uploaders = Array.from({ length: UPLOADERS }, async () => {
      while (flowing) {
        const n = next++;
        const f = fixture(n);
        attempts += 1;
        try {
          const res = await docs.upload(uploadOf(`Chaos ${n} (${f.kind})`, f), { timeoutMs: 20_000 });
          acked.push({ id: res.document!.id, version: res.version!.version, kind: f.kind, after: phase });
        } catch (err) {
          const e = ConnectError.from(err);
          const code = Code[e.code] ?? "unknown";
          refused.set(code, (refused.get(code) ?? 0) + 1);
          if (!refusedFirst.has(code)) refusedFirst.set(code, `${e.rawMessage} (after ${phase || "no kill"})`);
          await sleep(1_000);
        }
        await sleep(700);
      }
    });

    const ackedSince = (count: number) => acked.length - count;
    const kills: Array<{
      component: string;
      pid: number;
      back_pid: number;
      recovered_ms: number;
      midProcessing: boolean;
    }> = [];
    const started = Date.now();
    try {
      await until("the first uploads", () => acked.length >= 5, 60_000);
      for (const component of KILLS) {
        // Each kill lands while the worker is in the middle of a document (best effort, bounded),
        // which is when a kill can strand or duplicate work.
        const midProcessing = await until(
          `a document in processing before killing ${component}`,
          async () => {
            const recent = acked.slice(-6);
            const states = await Promise.all(
              recent.map((a) =>
                docs.getDocument({ id: a.id }).then(
                  (r) => r.document!.processingStatus,
                  () => undefined,
                ),
              ),
            );
            return states.includes(ProcessingStatus.PROCESSING);
          },
          30_000,
          100,
        ).then(
          () => true,
          () => false,
        );
        const pid = currentPids()[component]!;
        const restartsBefore = launcherLines(mesh.output(), "component restarted").filter(
          (l) => l.component === component,
        ).length;
        const killedAt = Date.now();
        process.kill(pid, "SIGKILL");
        phase = component;
        await until(
          `the launcher to restart ${component}`,
          () =>
            launcherLines(mesh.output(), "component restarted").filter((l) => l.component === component).length >
            restartsBefore,
          120_000,
        );
        await until(`the gateway to be ready after ${component} came back`, ready, 120_000, 500);
        const back = currentPids()[component]!;
        kills.push({ component, pid, back_pid: back, recovered_ms: Date.now() - killedAt, midProcessing });
        // The flow resumes, and the pipeline carries a new upload to its end, before the next
        // kill: every kill lands on live traffic, and each recovery is seen on its own.
        const count = acked.length;
        await until(
          `uploads to be acknowledged again after ${component} came back`,
          () => ackedSince(count) >= 3,
          120_000,
        );
        const probe = acked[count]!;
        await until(
          `an upload made after ${component} came back to be processed`,
          async () => {
            const d = await docs.getDocument({ id: probe.id }).catch(() => undefined);
            return d !== undefined && TERMINAL.has(d.document!.processingStatus);
          },
          120_000,
          500,
        );
      }
    } finally {
      flowing = false;
      await Promise.all(uploaders);
    }
    const flowMs = Date.now() - started;
    expect(mesh.child.exitCode).toBeNull();
    expect(kills.map((k) => k.component)).toEqual([...KILLS]);
    for (const k of kills) expect(k.back_pid).not.toBe(k.pid);

    // Drain: wait (bounded) for every acknowledged document to reach a terminal status.
    const drainStarted = Date.now();
    const listed = new Map<string, Document>();
    const listAll = async () => {
      listed.clear();
      let pageToken = "";
      do {
        const page = await docs.listDocuments({ pageSize: 100, pageToken });
        for (const d of page.documents) listed.set(d.id, d);
        pageToken = page.nextPageToken;
      } while (pageToken);
    };
    const stranded = () =>
      acked.filter((a) => {
        const d = listed.get(a.id);
        return !d || !TERMINAL.has(d.processingStatus);
      });
    let drainMs: number | undefined;
    try {
      await until(
        "every acknowledged document to reach a terminal status",
        async () => {
          await listAll().catch(() => undefined);
          return listed.size > 0 && stranded().length === 0;
        },
        180_000,
        2_000,
      );
      drainMs = Date.now() - drainStarted;
    } catch {
      // Reported with the figures below.
    }
    await listAll();
    const strandedDocs = stranded().map((a) => ({
      ...a,
      status: ProcessingStatus[listed.get(a.id)?.processingStatus ?? ProcessingStatus.UNSPECIFIED],
    }));
    const missingFromList = acked.filter((a) => !listed.has(a.id)).map((a) => a.id);

    // Each terminal document's outcome, as documents serves it: for the acknowledged version, and
    // the kind the status says.
    const outcomes = new Map<string, { status: ProcessingStatus; reason?: FailureReason }>();
    const wrongOutcome: string[] = [];
    for (const a of acked) {
      const d = listed.get(a.id);
      if (!d || !TERMINAL.has(d.processingStatus)) continue;
      const { outcome } = await docs.getProcessingResult({ documentId: a.id, version: a.version });
      const kind = outcome?.outcome.case;
      const expected = asProcessed(d.processingStatus) === ProcessingStatus.PROCESSED ? "result" : "failure";
      if (outcome?.version !== a.version || kind !== expected)
        wrongOutcome.push(`${a.id}: ${ProcessingStatus[d.processingStatus]} with outcome ${kind} v${outcome?.version}`);
      outcomes.set(a.id, {
        status: asProcessed(d.processingStatus),
        reason: outcome?.outcome.case === "failure" ? outcome.outcome.value.reason : undefined,
      });
    }

    // The status history itself: exactly one terminal entry per acknowledged version.
    const history = new pg.Client({ connectionString: mesh.endpoints.get("postgres")! });
    await history.connect();
    const terminalEntries = new Map<string, number>();
    try {
      const { rows } = await history.query<{ id: string; version: number; n: number }>(
        `select document_id::text as id, version, count(*)::int as n from documents.document_status
         where status in ('processed', 'failed') group by 1, 2`,
      );
      for (const r of rows) terminalEntries.set(`${r.id}/${r.version}`, r.n);
    } finally {
      await history.end();
    }
    const twiceTerminal = acked
      .filter((a) => (terminalEntries.get(`${a.id}/${a.version}`) ?? 0) > 1)
      .map((a) => `${a.id}: ${terminalEntries.get(`${a.id}/${a.version}`)} terminal entries`);

    // The outcome events on document.events, read from the beginning by a group of its own. The
    // worker's relay publishes a moment after documents records the outcome, so read (bounded)
    // until every terminal document has one.
    const events = new Map<string, { ids: Set<string>; copies: number; types: Set<string>; versions: Set<number> }>();
    const reader = kafka.consumer({ groupId: `chaos-reader-${Date.now()}` });
    await reader.connect();
    await reader.subscribe({ topic: "document.events", fromBeginning: true });
    await reader.run({
      eachMessage: async ({ message }) => {
        const type = message.headers?.ce_type?.toString() ?? "";
        if (type !== "medmesh.document.processed.v1" && type !== "medmesh.document.failed.v1") return;
        const payload =
          type === "medmesh.document.processed.v1"
            ? fromBinary(DocumentProcessedSchema, message.value!)
            : fromBinary(DocumentFailedSchema, message.value!);
        const e = events.get(payload.documentId) ?? {
          ids: new Set(),
          copies: 0,
          types: new Set(),
          versions: new Set(),
        };
        e.ids.add(message.headers!.ce_id!.toString());
        e.types.add(type);
        e.versions.add(payload.version);
        e.copies += 1;
        events.set(payload.documentId, e);
      },
    });
    try {
      await until(
        "an outcome event for every terminal document",
        () => [...outcomes.keys()].every((id) => events.has(id)),
        60_000,
        500,
      ).catch(() => undefined);
      // A moment more, so copies that follow are read too.
      await sleep(2_000);
    } finally {
      await reader.disconnect();
    }
    const withoutEvent = [...outcomes.keys()].filter((id) => !events.has(id));
    const twoOutcomes = acked
      .filter((a) => (events.get(a.id)?.ids.size ?? 0) > 1)
      .map((a) => {
        const e = events.get(a.id)!;
        return `${a.id}: ${e.ids.size} outcome event ids (${[...e.types].join(", ")}; versions ${[...e.versions].join(", ")})`;
      });
    const eventVersionWrong = acked
      .filter((a) => events.has(a.id) && [...events.get(a.id)!.versions].some((v) => v !== a.version))
      .map((a) => a.id);
    const repeatedCopies = [...events.values()].reduce((n, e) => n + e.copies - e.ids.size, 0);

    // What each file deserves: text and PDFs are processed, the encrypted PDF fails as such. A
    // processing_error here is a transient outage turned into a permanent failure.
    const deserved = (a: Acked) =>
      a.kind === "encrypted" ? `FAILED/${FailureReason[FailureReason.ENCRYPTED]}` : "PROCESSED";
    const got = (id: string) => {
      const o = outcomes.get(id);
      if (!o) return "none";
      return o.status === ProcessingStatus.PROCESSED ? "PROCESSED" : `FAILED/${FailureReason[o.reason ?? 0]}`;
    };
    const wrongForContent = acked
      .filter((a) => outcomes.has(a.id) && got(a.id) !== deserved(a))
      .map((a) => `${a.id} (${a.kind}, after ${a.after || "no kill"}): ${got(a.id)}, deserved ${deserved(a)}`);
    // Uploads that committed although their caller saw an error (the answer was lost): not
    // acknowledged, so not held to anything, but counted.
    const ackedIds = new Set(acked.map((a) => a.id));
    const unacked = [...listed.values()].filter((d) => !ackedIds.has(d.id));
    const admin = kafka.admin();
    await admin.connect();
    const deadLetters = await admin
      .fetchTopicOffsets("document.events.dlq")
      .then((offsets) => offsets.reduce((n, o) => n + Number(o.high) - Number(o.low), 0))
      .catch(() => 0)
      .finally(() => admin.disconnect());

    const byStatus = (s: ProcessingStatus) => [...outcomes.values()].filter((o) => o.status === s).length;
    const processingErrors = [...outcomes.values()].filter((o) => o.reason === FailureReason.PROCESSING_ERROR).length;
    const duplicates = twiceTerminal.length + twoOutcomes.length;
    const restarts = launcherLines(mesh.output(), "component exited unexpectedly; restarting it").map(
      (l) => `${l.component} (${l.signal ?? `code ${l.code}`})`,
    );
    const figures = {
      kills_survived: kills.length,
      kills: kills.map(
        (k) => `${k.component} back in ${k.recovered_ms} ms${k.midProcessing ? ", killed mid-processing" : ""}`,
      ),
      restarts_logged: restarts,
      upload_attempts: attempts,
      acknowledged: acked.length,
      refused_during_outages: Object.fromEntries(refused),
      refused_first_message: Object.fromEntries(refusedFirst),
      committed_without_ack: unacked.length,
      committed_without_ack_not_terminal: unacked.filter((d) => !TERMINAL.has(d.processingStatus)).length,
      flow_ms: flowMs,
      processed: byStatus(ProcessingStatus.PROCESSED),
      failed: byStatus(ProcessingStatus.FAILED),
      failed_as_processing_error: processingErrors,
      wrong_outcome_for_content: wrongForContent.length,
      dead_letters: deadLetters,
      stranded: strandedDocs.length,
      duplicates,
      duplicate_outcome_event_copies_same_id: repeatedCopies,
      terminal_without_outcome_event: withoutEvent.length,
      missing_from_list: missingFromList.length,
      drain_ms: drainMs ?? `not drained within 180000 ms`,
    };
    console.log(`chaos figures:\n${JSON.stringify(figures, null, 2)}`);
    if (strandedDocs.length > 0) console.log(`stranded:\n${strandedDocs.map((s) => JSON.stringify(s)).join("\n")}`);
    if (wrongForContent.length > 0) console.log(`wrong outcome for the content:\n${wrongForContent.join("\n")}`);
    if (withoutEvent.length > 0)
      console.log(
        `terminal without an outcome event:\n${withoutEvent
          .map(
            (id) =>
              `${id} ${ProcessingStatus[outcomes.get(id)!.status]} ${FailureReason[outcomes.get(id)!.reason ?? 0]}`,
          )
          .join("\n")}`,
      );

    expect(mesh.child.exitCode).toBeNull();
    expect(acked.length).toBeGreaterThan(0);
    expect(missingFromList).toEqual([]);
    expect(strandedDocs).toEqual([]);
    expect(wrongOutcome).toEqual([]);
    expect(twiceTerminal).toEqual([]);
    expect(twoOutcomes).toEqual([]);
    expect(eventVersionWrong).toEqual([]);
    // Every outcome is announced once (under one id), so downstream consumers learn of it.
    expect(withoutEvent).toEqual([]);
    // A component that was down for seconds is a transient failure, never a verdict on a file.
    expect(wrongForContent).toEqual([]);
    passed = true;
  }, 900_000);
});
