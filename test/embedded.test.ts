import { execFile } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DocumentService, ProcessingStatus } from "../gen/medmesh/documents/v1/documents_pb.js";
import { paperPdf } from "./fixtures/documents/make-fixtures.js";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { ServerReflection } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import {
  freePort,
  freeMeshPorts,
  isAlive,
  repoRoot,
  startEmbeddedMesh,
  type EmbeddedMesh,
} from "./support/embedded-mesh.js";

const run = promisify(execFile);
const buf = path.join(repoRoot, "node_modules/.bin/buf");

async function bufCurl(...args: string[]): Promise<string> {
  const { stdout } = await run(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...args], {
    timeout: 30_000,
  });
  return stdout;
}

/** What `grpcurl describe` does: ask reflection for the file defining a symbol and read it. */
async function describeMessage(address: string, typeName: string): Promise<string[]> {
  const reflection = createMeshClient(ServerReflection, address);
  try {
    async function* ask() {
      yield { messageRequest: { case: "fileContainingSymbol" as const, value: typeName } };
    }
    for await (const res of reflection.serverReflectionInfo(ask(), { timeoutMs: 10_000 })) {
      if (res.messageResponse.case !== "fileDescriptorResponse")
        throw new Error(`reflection answered ${res.messageResponse.case}`);
      const files = res.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b));
      const [pkg, name] = [typeName.slice(0, typeName.lastIndexOf(".")), typeName.slice(typeName.lastIndexOf(".") + 1)];
      const message = files.find((f) => f.package === pkg)?.messageType.find((m) => m.name === name);
      return message?.field.map((f) => f.name) ?? [];
    }
    return [];
  } finally {
    reflection.close();
  }
}

function pidsOf(mesh: EmbeddedMesh): Record<string, number> {
  const line = mesh
    .output()
    .split("\n")
    .find((l) => l.includes('"mesh ready"'));
  return line ? (JSON.parse(line).pids as Record<string, number>) : {};
}

describe("the embedded mesh, as `npm start` runs it", () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-e2e-"));
  let env: Record<string, string>;
  let mesh: EmbeddedMesh;
  let gateway: string;
  let documentsAddr: string;
  /** The bootstrap admin's authorization header. */
  let auth: { authorization: string };

  beforeAll(async () => {
    env = {
      MEDMESH_DATA_DIR: dataDir,
      ...(await freeMeshPorts()),
    };
    // The embedded default is the point of this test: no outside servers.
    delete process.env.DATABASE_URL;
    mesh = await startEmbeddedMesh({ ...env, DATABASE_URL: "", KAFKA_BROKERS: "", REDIS_URL: "" });
    gateway = mesh.endpoints.get("gateway")!;
    documentsAddr = mesh.endpoints.get("documents")!.replace("grpc://", "");
    // The embedded default makes admin@medmesh.local the first admin, as the README says.
    const post = (method: string, body: unknown) =>
      fetch(`${gateway}/medmesh.identity.v1.IdentityService/${method}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    expect(
      (
        await post("Register", {
          email: "admin@medmesh.local",
          username: "admin",
          password: "an admin password",
          firstName: "Ad",
          lastName: "Min",
        })
      ).status,
    ).toBe(200);
    const login = (await (await post("Login", { login: "admin", password: "an admin password" })).json()) as {
      tokens: { accessToken: string };
    };
    auth = { authorization: `Bearer ${login.tokens.accessToken}` };
  });

  afterAll(async () => {
    await mesh?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("prints one `<name> <url>` line per endpoint, the gateway first", () => {
    expect(mesh.order[0]).toBe("gateway");
    expect(new Set(mesh.order)).toEqual(
      new Set([
        "gateway",
        "postgres",
        "kafka",
        "smtp",
        "mailbox",
        "identity",
        "documents",
        "processing",
        "search",
        "notifications",
        "devices",
      ]),
    );
    expect(mesh.endpoints.get("processing")).toBe(`grpc://127.0.0.1:${env.PROCESSING_PORT}`);
    expect(gateway).toBe(`http://127.0.0.1:${env.GATEWAY_PORT}`);
    expect(mesh.endpoints.get("kafka")).toBe(`127.0.0.1:${env.KAFKA_PORT}`);
  });

  it("is ready: gateway /readyz and the service's gRPC health", async () => {
    expect((await fetch(`${gateway}/readyz`)).status).toBe(200);
    const health = createMeshClient(Health, documentsAddr);
    const res = await health.check({ service: "medmesh.documents.v1.DocumentService" }, { timeoutMs: 5_000 });
    expect(res.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    health.close();
  });

  it("speaks Connect JSON to curl-like clients and gRPC straight to the service", async () => {
    const res = await fetch(`${gateway}/medmesh.documents.v1.DocumentService/CreateDocument`, {
      method: "POST",
      headers: { "content-type": "application/json", ...auth },
      body: JSON.stringify({
        document: { title: "Embedded end to end", documentType: "DOCUMENT_TYPE_CASE_REPORT", doi: "10.5555/e2e-1" },
      }),
    });
    expect(res.status).toBe(200);
    const { document } = (await res.json()) as { document: { id: string } };
    const direct = createMeshClient(DocumentService, documentsAddr, { headers: auth });
    const got = await direct.getDocument({ id: document.id }, { timeoutMs: 5_000 });
    expect(got.document!.doi).toBe("10.5555/e2e-1");
    direct.close();
  });

  for (const target of ["gateway", "documents"] as const) {
    it(`buf curl lists, describes and calls through reflection on the ${target}`, async () => {
      const base = target === "gateway" ? gateway : `http://${documentsAddr}`;
      const services = await bufCurl("--list-services", base);
      expect(services.split("\n")).toEqual(
        expect.arrayContaining([
          "medmesh.documents.v1.DocumentService",
          "grpc.health.v1.Health",
          "grpc.reflection.v1.ServerReflection",
          "grpc.reflection.v1alpha.ServerReflection",
        ]),
      );
      const methods = await bufCurl("--list-methods", base);
      for (const m of ["CreateDocument", "GetDocument", "ListDocuments", "UpdateDocument", "DeleteDocument"]) {
        expect(methods).toContain(`medmesh.documents.v1.DocumentService/${m}`);
      }
      const fields = await describeMessage(
        target === "gateway" ? gateway.replace("http://", "") : documentsAddr,
        "medmesh.documents.v1.Document",
      );
      expect(fields).toEqual(
        expect.arrayContaining(["title", "doi", "publication_date", "processing_status", "metadata"]),
      );
      const listed = JSON.parse(
        await bufCurl(
          "-H",
          `authorization: ${auth.authorization}`,
          "-d",
          '{"pageSize": 5}',
          `${base}/medmesh.documents.v1.DocumentService/ListDocuments`,
        ),
      );
      expect(listed.documents.some((d: { doi?: string }) => d.doi === "10.5555/e2e-1")).toBe(true);
    });
  }

  it("signs a user up and in through the gateway, and publishes the keys that verify the token", async () => {
    const call = (method: string, body: unknown) =>
      fetch(`${gateway}/medmesh.identity.v1.IdentityService/${method}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    const registered = await call("Register", {
      email: "ada@example.org",
      username: "ada",
      password: "correct horse battery",
      firstName: "Ada",
      lastName: "Byron",
    });
    expect(registered.status).toBe(200);
    const login = await call("Login", { login: "ada@example.org", password: "correct horse battery" });
    expect(login.status).toBe(200);
    const body = (await login.json()) as { tokens?: { accessToken: string } };
    const token = body.tokens!.accessToken;
    const kid = JSON.parse(Buffer.from(token.split(".")[0]!, "base64url").toString()).kid;
    const jwks = (await (await fetch(`${gateway}/.well-known/jwks.json`)).json()) as {
      keys: Array<{ kid: string; kty: string }>;
    };
    expect(jwks.keys.map((k) => k.kid)).toContain(kid);
    const me = await fetch(`${gateway}/medmesh.identity.v1.IdentityService/GetMe`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: "{}",
    });
    expect(me.status).toBe(200);
  });

  it("refuses anonymous document calls with unauthenticated, through buf curl too", async () => {
    const err = await bufCurl("-d", "{}", `${gateway}/medmesh.documents.v1.DocumentService/ListDocuments`).catch(
      (e: { stderr: string }) => e.stderr,
    );
    expect(err).toContain('"code": "unauthenticated"');
  });

  it("buf curl shows a bad request as invalid_argument with the field", async () => {
    const err = await bufCurl(
      "-H",
      `authorization: ${auth.authorization}`,
      "-d",
      '{"document":{"title":"x","documentType":"DOCUMENT_TYPE_REVIEW","doi":"bad"}}',
      `${gateway}/medmesh.documents.v1.DocumentService/CreateDocument`,
    ).catch((e: { stderr: string }) => e.stderr);
    expect(err).toContain('"code": "invalid_argument"');
    expect(err).toContain("document.doi");
  });

  it("kcat sees the embedded broker", async () => {
    const kcat = await run("kcat", ["-V"]).then(
      () => true,
      () => false,
    );
    if (!kcat && process.env.CI) throw new Error("kcat is required in CI");
    if (!kcat) return;
    const { stdout } = await run("kcat", ["-b", mesh.endpoints.get("kafka")!, "-L", "-m", "10"]);
    expect(stdout).toContain(`broker 1 at ${mesh.endpoints.get("kafka")}`);
  });

  it("runs the pipeline: an uploaded PDF is processed, DocumentProcessed is on document.events, and the worker's key is kept owner-only", async () => {
    const health = createMeshClient(Health, mesh.endpoints.get("processing")!.replace("grpc://", ""));
    expect((await health.check({ service: "" }, { timeoutMs: 5_000 })).status).toBe(
      HealthCheckResponse_ServingStatus.SERVING,
    );
    health.close();
    expect(statSync(path.join(dataDir, "secrets", "processing-api-key")).mode & 0o777).toBe(0o600);

    const uploaded = JSON.parse(
      await bufCurl(
        "-H",
        `authorization: ${auth.authorization}`,
        "-d",
        JSON.stringify({
          header: {
            document: { title: "Embedded pipeline", documentType: "DOCUMENT_TYPE_RESEARCH_PAPER" },
            filename: "paper.pdf",
            declaredMimeType: "application/pdf",
          },
        }) +
          "\n" +
          JSON.stringify({ chunk: paperPdf().toString("base64") }),
        `${gateway}/medmesh.documents.v1.DocumentService/Upload`,
      ),
    ) as { document: { id: string } };
    const id = uploaded.document.id;
    const direct = createMeshClient(DocumentService, documentsAddr, { headers: auth });
    await expect
      .poll(async () => (await direct.getDocument({ id }, { timeoutMs: 5_000 })).document!.processingStatus, {
        timeout: 30_000,
        interval: 200,
      })
      // Processed, then indexed by search, which runs in the mesh too.
      .toBe(ProcessingStatus.INDEXED);
    const result = await direct.getProcessingResult({ documentId: id }, { timeoutMs: 5_000 });
    expect(result.outcome!.outcome).toMatchObject({ case: "result", value: { pages: 3, specialty: "cardiology" } });
    direct.close();

    const kcat = await run("kcat", ["-V"]).then(
      () => true,
      () => false,
    );
    if (!kcat && process.env.CI) throw new Error("kcat is required in CI");
    if (!kcat) return;
    const { stdout } = await run("kcat", [
      "-b",
      mesh.endpoints.get("kafka")!,
      "-C",
      "-t",
      "document.events",
      "-o",
      "beginning",
      "-e",
      "-q",
      "-f",
      "%k %h\n",
    ]);
    const lines = stdout.split("\n").filter((l) => l.startsWith(id));
    expect(lines.map((l) => /ce_type=([a-z0-9.]+)/.exec(l)?.[1])).toEqual([
      "medmesh.document.uploaded.v1",
      "medmesh.document.processed.v1",
      "medmesh.document.indexed.v1",
    ]);
  });

  it("indexes an upload for search: WatchDocument ends at INDEXED, Connect GET finds it through the gateway, a deletion removes it", async () => {
    const word = `zebrafish${Date.now().toString(36)}`;
    const text = [
      `Cardiac regeneration in ${word} models`,
      "",
      "Abstract",
      `Adult ${word} regenerate heart muscle after injury; we mapped the cardiomyocytes that divide.`,
      "",
      "Methods",
      "Cryoinjury of the ventricle, lineage tracing and single-cell sequencing.",
    ].join("\n");
    const uploaded = JSON.parse(
      await bufCurl(
        "-H",
        `authorization: ${auth.authorization}`,
        "-d",
        JSON.stringify({
          header: {
            document: {
              title: `Cardiac regeneration in ${word}`,
              documentType: "DOCUMENT_TYPE_RESEARCH_PAPER",
              visibility: "VISIBILITY_PLATFORM",
              journal: "Development",
            },
            filename: "regeneration.txt",
          },
        }) +
          "\n" +
          JSON.stringify({ chunk: Buffer.from(text).toString("base64") }),
        `${gateway}/medmesh.documents.v1.DocumentService/Upload`,
      ),
    ) as { document: { id: string } };
    const id = uploaded.document.id;

    const direct = createMeshClient(DocumentService, documentsAddr, { headers: auth });
    const seen: ProcessingStatus[] = [];
    for await (const m of direct.watchDocument({ id }, { timeoutMs: 60_000 })) seen.push(m.status);
    direct.close();
    expect(seen.at(-1)).toBe(ProcessingStatus.INDEXED);

    // What a browser (or curl) sends: a Connect GET, the request as JSON in the query string.
    const search = async (query: string) => {
      const message = encodeURIComponent(JSON.stringify({ query }));
      const res = await fetch(
        `${gateway}/medmesh.search.v1.SearchService/Search?connect=v1&encoding=json&message=${message}`,
        { headers: auth },
      );
      expect(res.status).toBe(200);
      return (await res.json()) as {
        totalCount?: string;
        ranker: string;
        hits?: Array<{ documentId: string; journal: string; snippet: { text: string; highlights: unknown[] } }>;
      };
    };
    const found = await search(`${word} cardiomyocytes`);
    expect(found.totalCount).toBe("1");
    expect(found.ranker).toBe("RANKER_BM25");
    expect(found.hits![0]).toMatchObject({ documentId: id, journal: "Development" });
    expect(found.hits![0]!.snippet.highlights.length).toBeGreaterThan(0);

    const del = await fetch(`${gateway}/medmesh.documents.v1.DocumentService/DeleteDocument`, {
      method: "POST",
      headers: { "content-type": "application/json", ...auth },
      body: JSON.stringify({ id }),
    });
    expect(del.status).toBe(200);
    await expect.poll(async () => (await search(word)).totalCount ?? "0", { timeout: 10_000, interval: 100 }).toBe("0");
  });

  it("streams the admin's notifications over Connect through the gateway, and keeps their mail in the mailbox", async () => {
    // One Connect streaming request: a 5-byte envelope (flags, length) around the JSON message.
    const message = Buffer.from("{}");
    const envelope = Buffer.concat([Buffer.from([0, 0, 0, 0, message.length]), message]);
    const abort = new AbortController();
    const res = await fetch(`${gateway}/medmesh.notifications.v1.NotificationService/Subscribe`, {
      method: "POST",
      headers: { "content-type": "application/connect+json", ...auth },
      body: envelope,
      signal: abort.signal,
    });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    let text = "";
    // The welcome and the sign-in notice arrive as the stream's first messages.
    while (!(text.includes("NOTIFICATION_TYPE_WELCOME") && text.includes("NOTIFICATION_TYPE_NEW_SIGN_IN"))) {
      const { value, done } = await reader.read();
      if (done) break;
      text += Buffer.from(value).toString("latin1");
    }
    abort.abort();
    expect(text).toContain('"title":"Welcome to medmesh"');
    expect(text).toContain("NOTIFICATION_TYPE_NEW_SIGN_IN");
    // The mail went to the embedded SMTP sink, one .eml file per message under the data dir.
    const mailbox = path.join(dataDir, "mailbox");
    await expect
      .poll(() => readdirSync(mailbox).filter((f) => f.endsWith(".eml")).length, { timeout: 20_000 })
      .toBeGreaterThanOrEqual(2);
    const mails = readdirSync(mailbox)
      .filter((f) => f.endsWith(".eml"))
      .map((f) => readFileSync(path.join(mailbox, f), "utf8"));
    expect(mails.some((m) => /^To: admin@medmesh\.local/m.test(m) && /^Subject: Welcome to medmesh/m.test(m))).toBe(
      true,
    );
  });

  it("stops every process on SIGTERM and keeps its data across a restart", async () => {
    const pids = pidsOf(mesh);
    expect(Object.keys(pids).sort()).toEqual([
      "devices",
      "documents",
      "gateway",
      "identity",
      "kafka",
      "notifications",
      "postgres",
      "processing",
      "search",
      "smtp",
    ]);
    const stopping = Date.now();
    expect(await mesh.stop("SIGTERM")).toBe(0);
    console.log(`stopped in ${Date.now() - stopping} ms; first start was ready in ${mesh.readyMs} ms`);
    for (const [name, pid] of Object.entries(pids)) expect(isAlive(pid), `${name} still running`).toBe(false);

    mesh = await startEmbeddedMesh({ ...env, DATABASE_URL: "", KAFKA_BROKERS: "", REDIS_URL: "" });
    const listed = JSON.parse(
      await bufCurl(
        "-H",
        `authorization: ${auth.authorization}`,
        "-d",
        "{}",
        `${mesh.endpoints.get("gateway")}/medmesh.documents.v1.DocumentService/ListDocuments`,
      ),
    );
    expect(listed.documents.map((d: { doi?: string }) => d.doi)).toContain("10.5555/e2e-1");
    console.log(`restarted and ready in ${mesh.readyMs} ms`);
  });
});
