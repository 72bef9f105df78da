import http2 from "node:http2";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { MeshTestService } from "../gen/medmesh/meshtest/v1/meshtest_pb.js";
import { createMeshClient } from "../platform/grpc/client.js";
import { grpcTarget, spawnService, type ChildService } from "./support/child-service.js";

// Deadlines of a few milliseconds, and ones that have already passed when the call arrives,
// must be answered deadline_exceeded by a process that keeps running. The conformance service
// and its gateway run in a child process, so a crash shows as the child exiting rather than as
// an error this test could mistake for an answer. Every method is asked to do far more than its
// deadline allows (wait a second, stream slowly, read an input that does not end in time), so
// the only correct answer is deadline_exceeded however fast or slow the machine is.

type MeshTest = Client<typeof MeshTestService>;

let svc: ChildService;
let direct: MeshTest & { close(): void };
const closers: (() => void)[] = [];

beforeAll(async () => {
  svc = await spawnService("test/support/meshtest-main.ts", {}, ["meshtest", "gateway"]);
  direct = createMeshClient(MeshTestService, grpcTarget(svc.endpoints.meshtest!));
  closers.push(() => direct.close());
});

afterAll(async () => {
  for (const close of closers) close();
  await svc?.stop();
});

async function* slowInput<T>(first: T): AsyncIterable<T> {
  yield first;
  // Longer than any deadline below: the request stream is still open when the deadline passes.
  await sleep(300);
}

async function drain(it: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of it);
}

/** The code a call ended with; "ok" if it succeeded. */
async function outcome(call: () => Promise<unknown>): Promise<string> {
  try {
    await call();
    return "ok";
  } catch (err) {
    return Code[ConnectError.from(err).code]!;
  }
}

function everyKind(client: () => MeshTest, streamsIn: boolean) {
  const calls: Record<string, (timeoutMs: number) => Promise<unknown>> = {
    unary: (timeoutMs) => client().wait({ ms: 1_000 }, { timeoutMs }),
    "server streaming": (timeoutMs) => drain(client().count({ count: 3, intervalMs: 300 }, { timeoutMs })),
  };
  if (streamsIn) {
    calls["client streaming"] = (timeoutMs) => client().sum(slowInput({ value: 1n }), { timeoutMs });
    calls["bidi streaming"] = (timeoutMs) => drain(client().chat(slowInput({ text: "a" }), { timeoutMs }));
  }
  return calls;
}

async function expectAliveAndAnswering(): Promise<void> {
  expect(svc.exited(), svc.stderr()).toBeUndefined();
  expect((await direct.echo({ text: "still here" }, { timeoutMs: 10_000 })).text).toBe("still here");
  const viaGateway = createClient(
    MeshTestService,
    createConnectTransport({ baseUrl: svc.endpoints.gateway!, httpVersion: "1.1" }),
  );
  expect((await viaGateway.echo({ text: "still here" }, { timeoutMs: 10_000 })).text).toBe("still here");
  expect(svc.stderr()).not.toMatch(/Unhandled|uncaught/i);
}

/** A raw gRPC request over h2c with a grpc-timeout of our choosing: its grpc-status. */
async function rawGrpcStatus(base: string, method: string, grpcTimeout: string, message: Buffer): Promise<string> {
  const session = http2.connect(base);
  session.on("error", () => undefined);
  try {
    return await new Promise<string>((resolve, reject) => {
      const req = session.request({
        ":method": "POST",
        ":path": `/medmesh.meshtest.v1.MeshTestService/${method}`,
        "content-type": "application/grpc",
        te: "trailers",
        "grpc-timeout": grpcTimeout,
      });
      // The answer is the status, in the headers (trailers-only) or the trailers; the call is
      // then over for us, even where our own request stream is still open.
      const answered = (status: unknown) => {
        if (status === undefined) return;
        clearTimeout(bound);
        resolve(String(status));
        req.close();
      };
      const bound = setTimeout(() => {
        resolve("no answer within 10 s");
        req.close();
      }, 10_000);
      req.on("response", (h) => answered(h["grpc-status"]));
      req.on("trailers", (t) => answered(t["grpc-status"]));
      req.on("data", () => undefined);
      req.on("error", reject);
      req.on("close", () => answered(`no grpc-status (HTTP/2 code ${req.rstCode})`));
      const frame = Buffer.alloc(5 + message.length);
      frame.writeUInt32BE(message.length, 1);
      message.copy(frame, 5);
      // Request streams are left open: only the deadline can end those calls.
      if (method === "Sum" || method === "Chat") req.write(frame);
      else req.end(frame);
    });
  } finally {
    session.close();
  }
}

describe("deadlines of 0-10 ms straight to a grpc-js server", () => {
  it("every call kind answers deadline_exceeded and the server lives on", async () => {
    const seen: Record<string, string> = {};
    for (let ms = 0; ms <= 10; ms++) {
      for (const [kind, call] of Object.entries(everyKind(() => direct, true))) {
        seen[`${kind} ${ms} ms`] = await outcome(() => call(ms));
      }
    }
    expect(Object.entries(seen).filter(([, code]) => code !== "DeadlineExceeded")).toEqual([]);
    await expectAliveAndAnswering();
  });

  it("a grpc-timeout that has already run out when the call arrives is answered, never fatal", async () => {
    // What a C-core client sends for a tiny deadline, and what arrives after a slow hop: the
    // deadline is over before the handler could start. This exact input used to end the process.
    const messages: Record<string, Buffer> = {
      Echo: Buffer.from([0x0a, 0x01, 0x78]),
      Wait: Buffer.from([0x08, 0xe8, 0x07]),
      Count: Buffer.from([0x08, 0x03, 0x10, 0xac, 0x02]),
      Sum: Buffer.from([0x08, 0x01]),
      Chat: Buffer.from([0x0a, 0x01, 0x61]),
    };
    const base = `http://${grpcTarget(svc.endpoints.meshtest!)}`;
    const seen: Record<string, string> = {};
    for (const timeout of ["0n", "1n", "1u", "0m", "1m", "2m", "5m", "8m"]) {
      for (const [method, message] of Object.entries(messages)) {
        const status = await rawGrpcStatus(base, method, timeout, message);
        // Echo is quick enough to finish within a few milliseconds; everything else cannot.
        if (!(method === "Echo" && status === "0")) seen[`${method} ${timeout}`] = status;
      }
    }
    expect(Object.entries(seen).filter(([, status]) => status !== "4")).toEqual([]);
    await expectAliveAndAnswering();
  });
});

describe("deadlines of 1-10 ms through the gateway", () => {
  it("gRPC and Connect clients get deadline_exceeded on every call kind", async () => {
    const grpc = createClient(MeshTestService, createGrpcTransport({ baseUrl: svc.endpoints.gateway! }));
    const connect = createClient(
      MeshTestService,
      createConnectTransport({ baseUrl: svc.endpoints.gateway!, httpVersion: "1.1" }),
    );
    const seen: Record<string, string> = {};
    for (let ms = 1; ms <= 10; ms++) {
      for (const [kind, call] of Object.entries(everyKind(() => grpc, true))) {
        seen[`gRPC ${kind} ${ms} ms`] = await outcome(() => call(ms));
      }
      // Connect over HTTP/1.1 carries unary and server streaming only.
      for (const [kind, call] of Object.entries(everyKind(() => connect, false))) {
        seen[`Connect ${kind} ${ms} ms`] = await outcome(() => call(ms));
      }
    }
    expect(Object.entries(seen).filter(([, code]) => code !== "DeadlineExceeded")).toEqual([]);
    await expectAliveAndAnswering();
  });

  it("connect-timeout-ms 1..8 from plain HTTP is a deadline_exceeded answer with a sentence", async () => {
    // The header as curl or a browser sends it: the gateway alone enforces the deadline, and
    // the call it forwards is cancelled when it runs out. That cancellation used to come back
    // as 499 "canceled: Cancelled on client".
    const url = `${svc.endpoints.gateway}/medmesh.meshtest.v1.MeshTestService`;
    const seen: Record<string, string> = {};
    for (let t = 1; t <= 8; t++) {
      const unary = await fetch(`${url}/Wait`, {
        method: "POST",
        headers: { "content-type": "application/json", "connect-timeout-ms": String(t) },
        body: JSON.stringify({ ms: 1_000 }),
      });
      const body = (await unary.json()) as { code?: string; message?: string };
      seen[`Wait ${t} ms`] = `${unary.status} ${body.code}${body.message ? "" : " without a sentence"}`;

      const json = JSON.stringify({ count: 3, intervalMs: 300 });
      const frame = Buffer.alloc(5 + json.length);
      frame.writeUInt32BE(json.length, 1);
      frame.write(json, 5);
      const stream = await fetch(`${url}/Count`, {
        method: "POST",
        headers: { "content-type": "application/connect+json", "connect-timeout-ms": String(t) },
        body: frame,
      });
      const bytes = Buffer.from(await stream.arrayBuffer());
      // The last envelope (flag 2) is the end of the stream and carries the error.
      let end = "";
      for (let at = 0; at < bytes.length; at += 5 + bytes.readUInt32BE(at + 1)) {
        if (bytes[at]! & 2) end = bytes.subarray(at + 5, at + 5 + bytes.readUInt32BE(at + 1)).toString();
      }
      const error = (JSON.parse(end || "{}") as { error?: { code?: string; message?: string } }).error;
      seen[`Count ${t} ms`] = `${stream.status} ${error?.code}${error?.message ? "" : " without a sentence"}`;
    }
    expect(seen).toEqual(
      Object.fromEntries(
        Object.keys(seen).map((k) => [k, k.startsWith("Wait") ? "504 deadline_exceeded" : "200 deadline_exceeded"]),
      ),
    );
    await expectAliveAndAnswering();
  });
});
