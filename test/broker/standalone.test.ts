import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { expect, it } from "vitest";
import { RawClient, buildBatch, produceBody, readProduceResponse } from "./helpers.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

it("npm run broker is wired to the standalone entry point", () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")) as { scripts: Record<string, string> };
  expect(pkg.scripts.broker).toBe("node --import tsx deploy/embedded/kafka/main.ts");
});

it("the standalone broker prints its address, serves, and stops cleanly on SIGTERM", async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "medmesh-kafka-main-"));
  const child = spawn(process.execPath, ["--import", "tsx", "deploy/embedded/kafka/main.ts"], {
    cwd: root,
    env: { ...process.env, KAFKA_PORT: "0", KAFKA_DATA_DIR: dataDir, KAFKA_LOG_LEVEL: "silent" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  try {
    const address = await new Promise<string>((resolve, reject) => {
      let out = "";
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString();
        const m = /^kafka (\S+)$/m.exec(out);
        if (m) resolve(m[1]!);
      });
      child.on("exit", (code) => reject(new Error(`broker exited early with ${code}`)));
    });
    expect(address).toMatch(/^127\.0\.0\.1:\d+$/);
    const c = await RawClient.connect(address);
    const res = readProduceResponse(await c.request(0, 7, produceBody("standalone", 0, buildBatch([{ value: "hello" }]))));
    // Produce does not auto-create (only Metadata does, as in Kafka).
    expect(res.error).toBe(3);
    c.close();
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
    expect(fs.existsSync(path.join(dataDir, "committed-offsets.jsonl"))).toBe(true);
  } finally {
    child.kill("SIGKILL");
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
