import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import type { DescMessage, DescService } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ConfigError, env, loadConfig } from "../platform/config/env.js";
import { methodsWithoutPolicy, policyOf } from "../platform/grpc/access-policy.js";
import { deadLetterTopic, declaredEventKind, eventKind } from "../platform/events/index.js";
import { decodePageToken, encodePageToken } from "../platform/grpc/page-token.js";
import { isCalendarDate } from "../services/documents/model.js";
import { configSpec as documentsConfig } from "../services/documents/main.js";
import { configSpec as gatewayConfig } from "../gateway/main.js";
import { configSpec as identityConfig } from "../services/identity/main.js";
import { configSpec as processingConfig } from "../services/processing/main.js";
import { configSpec as searchConfig } from "../services/search/main.js";
import { configSpec as postgresConfig } from "../deploy/embedded/postgres.js";
import { configSpec as kafkaConfig } from "../deploy/embedded/kafka-component.js";
import { repoRoot } from "./support/embedded-mesh.js";

/** Every descriptor of a kind in the medmesh contracts, found by walking gen/ rather than listed by hand. */
async function allMeshDescriptors<T>(kind: "service" | "message"): Promise<T[]> {
  const dir = path.join(repoRoot, "gen/medmesh");
  const files = readdirSync(dir, { recursive: true })
    .map(String)
    .filter((f) => f.endsWith("_pb.ts"));
  const found: T[] = [];
  for (const f of files) {
    const mod = (await import(path.join(dir, f))) as Record<string, unknown>;
    for (const v of Object.values(mod)) {
      if (v && typeof v === "object" && (v as { kind?: string }).kind === kind) found.push(v as T);
    }
  }
  return found;
}

const allMeshServices = () => allMeshDescriptors<DescService>("service");

describe("access policy in the contracts", () => {
  it("every RPC of every medmesh service declares one", async () => {
    const services = await allMeshServices();
    expect(services.map((s) => s.typeName)).toContain("medmesh.documents.v1.DocumentService");
    expect(methodsWithoutPolicy(services)).toEqual([]);
  });

  it("is read from the descriptor", async () => {
    const { DocumentService } = await import("../gen/medmesh/documents/v1/documents_pb.js");
    const create = policyOf(DocumentService.method.createDocument)!;
    expect(create.roles.length).toBeGreaterThan(0);
    expect(policyOf(DocumentService.method.getDocument)!.audience).not.toBe(create.audience);
  });
});

describe("event kinds in the contracts", () => {
  const events = async () =>
    (await allMeshDescriptors<DescMessage>("message")).filter((m) => m.typeName.startsWith("medmesh.events.v1."));

  it("every message of medmesh.events.v1 declares its topic and CloudEvent type, each type its own", async () => {
    const messages = await events();
    expect(messages.map((m) => m.typeName)).toContain("medmesh.events.v1.DocumentUploaded");
    expect(messages.filter((m) => !declaredEventKind(m)).map((m) => m.typeName)).toEqual([]);
    const types = messages.map((m) => eventKind(m).type);
    expect(new Set(types).size).toBe(types.length);
    for (const m of messages) {
      const kind = eventKind(m);
      expect(kind.topic, m.typeName).toMatch(/^[a-z]+(\.[a-z]+)*\.events$/);
      expect(kind.type, m.typeName).toMatch(/^medmesh(\.[a-z_]+)+\.v\d+$/);
      expect(kind.contentType).toBe(`application/protobuf; proto=${m.typeName}`);
    }
  });

  it("keeps the names already on the wire", async () => {
    const byName = Object.fromEntries((await events()).map((m) => [m.name, eventKind(m)]));
    expect(byName.DocumentUploaded).toMatchObject({ topic: "document.events", type: "medmesh.document.uploaded.v1" });
    expect(byName.DocumentProcessed).toMatchObject({ topic: "document.events", type: "medmesh.document.processed.v1" });
    expect(byName.DocumentFailed).toMatchObject({ topic: "document.events", type: "medmesh.document.failed.v1" });
  });

  it("refuses to publish a message that declares none", async () => {
    const { DocumentSchema } = await import("../gen/medmesh/documents/v1/documents_pb.js");
    expect(declaredEventKind(DocumentSchema)).toBeUndefined();
    expect(() => eventKind(DocumentSchema)).toThrow(/medmesh.documents.v1.Document declares no/);
  });

  it("names dead-letter topics per topic, or per topic and group", () => {
    expect(deadLetterTopic("document.events")).toBe("document.events.dlq");
    expect(deadLetterTopic("document.events", "search")).toBe("document.events.search.dlq");
  });
});

describe("configuration", () => {
  const spec = {
    PORT: env.port("port", 1),
    SIZE: env.bytes("size", 1),
    URL: env.url("db", ["postgres:"]),
    MODE: env.oneOf("mode", ["a", "b"] as const, "a"),
  };

  it("parses sizes, ports and defaults", () => {
    expect(loadConfig(spec, { PORT: "8080", SIZE: "4MiB" })).toEqual({
      PORT: 8080,
      SIZE: 4 * 1024 * 1024,
      URL: undefined,
      MODE: "a",
    });
  });

  it("reports every problem at once, each as a sentence naming the variable", () => {
    let caught: unknown;
    try {
      loadConfig(spec, { PORT: "http", SIZE: "lots", URL: "mysql://x", MODE: "c" });
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as ConfigError).problems).toEqual([
      'PORT must be a whole number from 0 to 65535 (got "http")',
      'SIZE must be a size such as 4MiB or 1048576 (got "lots")',
      'URL must use postgres: (got "mysql:")',
      'MODE must be one of a, b (got "c")',
    ]);
  });

  it("the README's configuration table names every variable the processes read", () => {
    const readme = readFileSync(path.join(repoRoot, "README.md"), "utf8");
    const launcher = readFileSync(path.join(repoRoot, "deploy/embedded/launch.ts"), "utf8");
    const names = new Set([
      ...Object.keys(documentsConfig),
      ...Object.keys(gatewayConfig),
      ...Object.keys(identityConfig),
      ...Object.keys(processingConfig),
      ...Object.keys(searchConfig),
      ...Object.keys(postgresConfig),
      ...Object.keys(kafkaConfig),
    ]);
    for (const m of launcher.matchAll(/^\s+([A-Z][A-Z0-9_]+): env\./gm)) names.add(m[1]!);
    const missing = [...names].filter((n) => !readme.includes(`| \`${n}\` |`));
    expect(missing).toEqual([]);
  });
});

describe("page tokens", () => {
  it("round-trip a position for the same filters", () => {
    expect(decodePageToken(encodePageToken(42, { a: 1 }), { a: 1 })).toBe(42);
    expect(decodePageToken("", { a: 1 })).toBeUndefined();
  });

  it.each([
    ["not base64 JSON", "%%%"],
    ["JSON of the wrong shape", Buffer.from('{"v":2,"p":"x"}').toString("base64url")],
    ["an unsafe integer", Buffer.from('{"v":1,"p":1e300,"f":"x"}').toString("base64url")],
  ])("refuse %s with invalid_argument", (_what, token) => {
    expect(() => decodePageToken(token, {})).toThrowError(
      expect.objectContaining({ code: Code.InvalidArgument }) as ConnectError,
    );
  });

  it("refuse a token issued for other filters", () => {
    expect(() => decodePageToken(encodePageToken(1, { a: 1 }), { a: 2 })).toThrow(/different filters/);
  });
});

describe("calendar dates", () => {
  it.each([
    ["2024-02-29", true],
    ["2023-02-29", false],
    ["2023-04-31", false],
    ["2023-12-31", true],
    ["2023-1-01", false],
  ])("%s -> %s", (s, ok) => expect(isCalendarDate(s)).toBe(ok));
});
