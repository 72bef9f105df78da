import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as S } from "../gen/grpc/health/v1/health_pb.js";
import { DocumentService } from "../gen/medmesh/documents/v1/documents_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { startEmbeddedPostgres } from "../deploy/embedded/postgres.js";
import { startDocuments } from "../services/documents/main.js";
import { testEnv } from "./support/backends.js";
import { freePort } from "./support/embedded-mesh.js";
import { startTestIdentity, type TestIdentity } from "./support/identity.js";

const dataDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-health-"));
let pgEnv: Record<string, string>;
let postgres: Awaited<ReturnType<typeof startEmbeddedPostgres>> | undefined;
let documents: Awaited<ReturnType<typeof startDocuments>>;
let identity: TestIdentity;

beforeAll(async () => {
  pgEnv = { MEDMESH_DATA_DIR: dataDir, EMBEDDED_PG_PORT: String(await freePort()) };
  postgres = await startEmbeddedPostgres(pgEnv);
  identity = await startTestIdentity();
  documents = await startDocuments({
    ...testEnv,
    DATABASE_URL: postgres.url,
    DB_POOL_MAX: "2",
    IDENTITY_TARGET: identity.target,
  });
});

afterAll(async () => {
  await documents?.stop();
  await postgres?.stop();
  await identity?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

it("reports NOT_SERVING while its database is unreachable and SERVING once it is back, without losing data", async () => {
  const health = createMeshClient(Health, `127.0.0.1:${documents.port}`);
  const docs = createMeshClient(DocumentService, `127.0.0.1:${documents.port}`, {
    headers: await identity.bearer("doctor"),
  });
  const status = async () =>
    (await health.check({ service: "medmesh.documents.v1.DocumentService" }, { timeoutMs: 5_000 })).status;
  expect(await status()).toBe(S.SERVING);
  const { document } = await docs.createDocument({ document: { title: "survives an outage", documentType: 1 } });

  await postgres!.stop();
  postgres = undefined;
  await expect.poll(status, { timeout: 15_000, interval: 250 }).toBe(S.NOT_SERVING);
  // Readiness is reported, not the process killed: the server still answers health checks.
  expect(await status()).toBe(S.NOT_SERVING);

  postgres = await startEmbeddedPostgres(pgEnv);
  await expect.poll(status, { timeout: 15_000, interval: 250 }).toBe(S.SERVING);
  await expect
    .poll(
      async () =>
        (await docs.getDocument({ id: document!.id }, { timeoutMs: 5_000 }).catch(() => undefined))?.document?.title,
      { timeout: 15_000 },
    )
    .toBe("survives an outage");
  health.close();
  docs.close();
});
