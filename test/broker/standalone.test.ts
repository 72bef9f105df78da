import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { expect, it } from "vitest";
import { Writer } from "../../deploy/embedded/kafka/protocol/writer.js";
import {
  RawClient,
  batchOffsets,
  buildBatch,
  createTopicsBody,
  fetchBody,
  produceBody,
  readFetchResponse,
  readProduceResponse,
} from "./helpers.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

it("npm run broker is wired to the standalone entry point", () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")) as {
    scripts: Record<string, string>;
  };
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
    const res = readProduceResponse(
      await c.request(0, 7, produceBody("standalone", 0, buildBatch([{ value: "hello" }]))),
    );
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

function spawnBroker(dataDir: string, port = 0) {
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "deploy/embedded/kafka/main.ts",
      "--port",
      String(port),
      "--data-dir",
      dataDir,
      "--log-level",
      "silent",
    ],
    {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const address = new Promise<string>((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /^kafka (\S+)$/m.exec(out);
      if (m) resolve(m[1]!);
    });
    child.on("exit", (code) => reject(new Error(`broker exited early with ${code}`)));
  });
  return { child, address };
}

it("acknowledged messages and committed offsets survive SIGKILL of the broker process", async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "medmesh-kafka-kill-"));
  const first = spawnBroker(dataDir);
  let second: ReturnType<typeof spawnBroker> | null = null;
  try {
    const c = await RawClient.connect(await first.address);
    await c.request(19, 3, createTopicsBody("crash", 1));
    for (let i = 0; i < 5; i++) {
      const res = readProduceResponse(
        await c.request(0, 7, produceBody("crash", 0, buildBatch([{ value: `m${i}` }, { value: `n${i}` }]), -1)),
      );
      expect(res).toEqual({ error: 0, baseOffset: i * 2 });
    }
    const commit = new Writer().string("crash-g").int32(-1).string("").int64(-1);
    commit.array(["crash"], (w, t) => {
      w.string(t);
      w.array([0], (w, p) => w.int32(p).int64(7).nullableString("before-crash"));
    });
    const committed = await c.request(8, 4, commit);
    committed.int32();
    committed.int32();
    committed.string();
    committed.int32();
    committed.int32();
    expect(committed.int16()).toBe(0);
    const killed = new Promise((resolve) => first.child.on("exit", resolve));
    first.child.kill("SIGKILL");
    await killed;
    c.close();

    second = spawnBroker(dataDir);
    const d = await RawClient.connect(await second.address);
    const f = readFetchResponse(await d.request(1, 11, fetchBody("crash", 0, 0)));
    expect(f.highWatermark).toBe(10);
    expect(batchOffsets(f.records).map((b) => b.baseOffset)).toEqual([0, 2, 4, 6, 8]);
    const ask = new Writer().string("crash-g");
    ask.array(["crash"], (w, t) => {
      w.string(t);
      w.array([0], (w, p) => w.int32(p));
    });
    const fetched = await d.request(9, 4, ask);
    fetched.int32();
    fetched.int32();
    fetched.string();
    fetched.int32();
    fetched.int32();
    expect([fetched.int64(), fetched.nullableString()]).toEqual([7, "before-crash"]);
    d.close();
  } finally {
    first.child.kill("SIGKILL");
    second?.child.kill("SIGKILL");
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
