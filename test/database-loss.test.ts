import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { Code, ConnectError } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as S } from "../gen/grpc/health/v1/health_pb.js";
import { DocumentService } from "../gen/medmesh/documents/v1/documents_pb.js";
import { startEmbeddedPostgres } from "../deploy/embedded/postgres.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { toConnectError } from "../platform/grpc/errors.js";
import { grpcTarget, spawnService, type ChildService } from "./support/child-service.js";
import { freePort } from "./support/embedded-mesh.js";
import { startTestIdentity, type TestIdentity } from "./support/identity.js";

// The documents service loses its database connections in the middle of queries, under a
// small load: on real PostgreSQL by pg_terminate_backend on its own sessions only (found by a
// per-run application_name; the shared server keeps running), and on the embedded Postgres by
// stopping and restarting it. The service runs as a child process, so a crash is an exit the
// test sees. Calls that lose their connection fail `unavailable` with a sentence; health goes
// NOT_SERVING and back to SERVING; later calls succeed.

const sentence = "the database is unreachable right now; try again shortly";
let identity: TestIdentity | undefined;
const cleanups: (() => Promise<void>)[] = [];

afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await identity?.stop();
});

async function getIdentity(): Promise<TestIdentity> {
  identity ??= await startTestIdentity();
  return identity;
}

interface Harness {
  svc: ChildService;
  /** Every outcome of the load so far: "ok", or "<code>: <message>". */
  outcomes: Map<string, number>;
  /** Every status the health Watch stream reported, in order. */
  statuses: S[];
  stopLoad(): Promise<void>;
  docs: ReturnType<typeof createMeshClient<typeof DocumentService>>;
}

async function startUnderLoad(env: Record<string, string>): Promise<Harness> {
  const ident = await getIdentity();
  const svc = await spawnService(
    "services/documents/main.ts",
    { ...env, DOCUMENTS_PORT: "0", IDENTITY_TARGET: ident.target, DB_POOL_MAX: "4", LOG_LEVEL: "warn" },
    ["documents"],
  );
  cleanups.push(() => svc.stop());
  const target = grpcTarget(svc.endpoints.documents!);
  const docs = createMeshClient(DocumentService, target, { headers: await ident.bearer("doctor") });
  const health = createMeshClient(Health, target);
  const watching = new AbortController();
  cleanups.push(async () => {
    watching.abort();
    docs.close();
    health.close();
  });
  const statuses: S[] = [];
  void (async () => {
    for await (const r of health.watch({ service: "" }, { signal: watching.signal })) statuses.push(r.status);
  })().catch(() => undefined);
  await expect.poll(() => statuses.at(-1), { timeout: 10_000 }).toBe(S.SERVING);

  const { document } = await docs.createDocument({ document: { title: "before the outage", documentType: 1 } });
  const outcomes = new Map<string, number>();
  const note = (k: string) => outcomes.set(k, (outcomes.get(k) ?? 0) + 1);
  let running = true;
  // Writes are never retried by the client, reads may be (they are idempotent): both kinds.
  const load = (async () => {
    while (running) {
      await Promise.all(
        [0, 1, 2, 3].map((i) =>
          (i % 2
            ? docs.createDocument({ document: { title: `under load ${i}`, documentType: 1 } }, { timeoutMs: 20_000 })
            : docs.getDocument({ id: document!.id }, { timeoutMs: 20_000 })
          ).then(
            () => note("ok"),
            (err: unknown) => {
              const ce = ConnectError.from(err);
              note(`${Code[ce.code]}: ${ce.rawMessage}`);
            },
          ),
        ),
      );
      // A small load, and one that cannot spin if every call fails at once (a dead process).
      await sleep(10);
    }
  })();
  cleanups.push(async () => {
    running = false;
    await load;
  });
  return {
    svc,
    outcomes,
    statuses,
    docs,
    async stopLoad() {
      running = false;
      await load;
    },
  };
}

function unavailable(h: Harness): number {
  return h.outcomes.get(`Unavailable: ${sentence}`) ?? 0;
}

async function expectRecovered(h: Harness): Promise<void> {
  await h.stopLoad();
  expect(h.svc.exited(), h.svc.output()).toBeUndefined();
  // Only answers: ok, or unavailable with its sentence. Never internal, never a stack trace.
  expect([...h.outcomes.keys()].filter((k) => k !== "ok" && k !== `Unavailable: ${sentence}`)).toEqual([]);
  expect(unavailable(h)).toBeGreaterThan(0);
  // Health said NOT_SERVING after the loss, and SERVING again once the database answered.
  await expect.poll(() => h.statuses.at(-1), { timeout: 20_000 }).toBe(S.SERVING);
  const lost = h.statuses.indexOf(S.NOT_SERVING);
  expect(lost).toBeGreaterThan(0);
  expect(h.statuses.slice(lost)).toContain(S.SERVING);
  // The process lived through it and serves again.
  expect(h.svc.exited(), h.svc.output()).toBeUndefined();
  const { document } = await h.docs.createDocument(
    { document: { title: "after the outage", documentType: 1 } },
    { timeoutMs: 20_000 },
  );
  expect((await h.docs.getDocument({ id: document!.id }, { timeoutMs: 20_000 })).document?.title).toBe(
    "after the outage",
  );
  expect(h.svc.stderr()).not.toMatch(/Unhandled|uncaught|Connection terminated/i);
}

describe.runIf(process.env.DATABASE_URL)("real PostgreSQL, connections terminated mid-query", () => {
  it("calls fail unavailable, health goes NOT_SERVING and back, and the service carries on", async () => {
    const base = process.env.DATABASE_URL!;
    const app = `medmesh-dbloss-${randomBytes(4).toString("hex")}`;
    const schema = `documents_t${randomBytes(4).toString("hex")}`;
    const url = new URL(base);
    url.searchParams.set("application_name", app);
    const admin = new pg.Client({ connectionString: base });
    await admin.connect();
    cleanups.push(async () => {
      await admin.query(`drop schema if exists "${schema}" cascade`);
      await admin.end();
    });
    const h = await startUnderLoad({
      DATABASE_URL: url.toString(),
      DOCUMENTS_DB_SCHEMA: schema,
      MEDMESH_DATA_DIR: "memory://",
    });
    // Kill this service's sessions (and no one else's) until some call has lost its
    // connection mid-query; bounded, in case the load never has a query in flight.
    for (let round = 0; round < 50 && unavailable(h) === 0; round++) {
      await admin.query("select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1", [app]);
      await sleep(100);
    }
    await expectRecovered(h);
  });
});

describe("embedded Postgres stopped and restarted under load", () => {
  it("calls fail unavailable, health goes NOT_SERVING and back, and the service carries on", async () => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-dbloss-"));
    const pgEnv = { MEDMESH_DATA_DIR: dataDir, EMBEDDED_PG_PORT: String(await freePort()) };
    let postgres: Awaited<ReturnType<typeof startEmbeddedPostgres>> | undefined = await startEmbeddedPostgres(pgEnv);
    cleanups.push(async () => {
      await postgres?.stop();
      rmSync(dataDir, { recursive: true, force: true });
    });
    const h = await startUnderLoad({ DATABASE_URL: postgres.url, MEDMESH_DATA_DIR: "memory://" });
    await expect.poll(() => h.outcomes.get("ok") ?? 0, { timeout: 10_000 }).toBeGreaterThan(4);
    await postgres.stop();
    postgres = undefined;
    await expect.poll(() => unavailable(h), { timeout: 15_000 }).toBeGreaterThan(0);
    await expect.poll(() => h.statuses.includes(S.NOT_SERVING), { timeout: 15_000 }).toBe(true);
    expect(h.svc.exited(), h.svc.output()).toBeUndefined();
    postgres = await startEmbeddedPostgres(pgEnv);
    await expectRecovered(h);
  });
});

describe("which driver errors mean the connection was lost", () => {
  const withCode = (code: string, message = "x") => Object.assign(new Error(message), { code });
  it("maps connection-class errors to unavailable with a sentence, and leaves statement errors alone", () => {
    const lost = [
      withCode("57P01", "terminating connection due to administrator command"),
      withCode("57P03", "the database system is starting up"),
      withCode("08006", "connection failure"),
      withCode("ECONNRESET", "read ECONNRESET"),
      withCode("ECONNREFUSED", "connect ECONNREFUSED 127.0.0.1:5432"),
      new Error("Connection terminated unexpectedly"),
      new Error("timeout exceeded when trying to connect"),
      new AggregateError([withCode("ECONNREFUSED")], "connect failed"),
    ];
    for (const err of lost) {
      const ce = toConnectError(err, "test");
      expect([ce.code, ce.rawMessage], err.message).toEqual([Code.Unavailable, sentence]);
    }
    const notLost = [withCode("42601", "syntax error"), withCode("23505", "duplicate key"), new Error("Connection")];
    for (const err of notLost) expect(toConnectError(err, "test").code, err.message).toBe(Code.Internal);
  });
});
