import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { DeviceEventSchema, DeviceService, type StreamEventsRequest } from "../gen/medmesh/devices/v1/devices_pb.js";
import { freePort, freeMeshPorts, isAlive, startEmbeddedMesh, type EmbeddedMesh } from "./support/embedded-mesh.js";

/** Launcher lines with this message, parsed. */
function launcherLines(output: string, msg: string): Array<Record<string, unknown>> {
  return output
    .split("\n")
    .filter((l) => l.startsWith("{") && l.includes('"service":"launcher"') && l.includes(`"msg":"${msg}"`))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

const event = (deviceId: string, n: number) =>
  create(DeviceEventSchema, {
    deviceId,
    sequence: BigInt(n),
    clientId: `e${n}`,
    eventTime: timestampFromDate(new Date()),
    readings: { pulse: n },
  });

describe("devices through the gateway of the embedded mesh", () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-devices-e2e-"));
  let mesh: EmbeddedMesh;
  let gateway: string;
  let admin: string;

  const post = async (method: string, body: unknown, token?: string) => {
    const res = await fetch(`${gateway}/${method}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };
  const getState = async (deviceId: string, token: string) => {
    const message = encodeURIComponent(JSON.stringify({ deviceId }));
    const res = await fetch(
      `${gateway}/medmesh.devices.v1.DeviceService/GetDeviceState?connect=v1&encoding=json&message=${message}`,
      { headers: { authorization: `Bearer ${token}` } },
    );
    return (await res.json()) as Record<string, any>;
  };
  const register = async () => {
    const reg = await post("medmesh.devices.v1.DeviceService/RegisterDevice", { name: "e2e", type: "oximeter" }, admin);
    expect(reg.status).toBe(200);
    const ex = await post("medmesh.identity.v1.IdentityService/ExchangeApiKey", { apiKey: reg.body.apiKey });
    return { id: reg.body.device.id as string, token: ex.body.accessToken as string };
  };

  beforeAll(async () => {
    delete process.env.DATABASE_URL;
    mesh = await startEmbeddedMesh({
      MEDMESH_DATA_DIR: dataDir,
      ...(await freeMeshPorts()),
      DATABASE_URL: "",
      KAFKA_BROKERS: "",
      REDIS_URL: "",
      LOG_LEVEL: "info",
    });
    gateway = mesh.endpoints.get("gateway")!;
    await post("medmesh.identity.v1.IdentityService/Register", {
      email: "admin@medmesh.local",
      username: "admin",
      password: "an admin password",
      firstName: "Ad",
      lastName: "Min",
    });
    admin = (await post("medmesh.identity.v1.IdentityService/Login", { login: "admin", password: "an admin password" }))
      .body.tokens.accessToken;
  }, 180_000);

  afterAll(async () => {
    await mesh?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("takes Connect JSON batches and gRPC streams through the gateway, and reads the state back with a GET", async () => {
    const { id, token } = await register();
    const batch = await post(
      "medmesh.devices.v1.DeviceService/PublishEvents",
      {
        events: [1, 2].map((n) => ({
          deviceId: id,
          sequence: n,
          clientId: `e${n}`,
          eventTime: new Date().toISOString(),
          readings: { pulse: n },
        })),
      },
      token,
    );
    expect(batch.body).toEqual({
      results: [
        { sequence: "1", outcome: "EVENT_OUTCOME_ACCEPTED" },
        { sequence: "2", outcome: "EVENT_OUTCOME_ACCEPTED" },
      ],
      ackedSequence: "2",
    });
    // A misspelt field is refused by name at the edge.
    const typo = await post(
      "medmesh.devices.v1.DeviceService/PublishEvents",
      { events: [{ deviceId: id, sequence: 3, clientId: "x", eventTime: new Date().toISOString(), readingz: {} }] },
      token,
    );
    expect(typo.status).toBe(400);
    expect(typo.body.message).toMatch(/readingz/);
    // A refusal naming an element of the batch keeps its sentence through the gateway.
    const empty = await post(
      "medmesh.devices.v1.DeviceService/PublishEvents",
      { events: [{ deviceId: id, sequence: 3, clientId: "", eventTime: new Date().toISOString(), readings: {} }] },
      token,
    );
    expect(empty.status).toBe(400);
    expect(empty.body.message).toMatch(/events\[0\]\.client_id/);

    const client = createClient(DeviceService, createGrpcTransport({ baseUrl: gateway }));
    async function* events(): AsyncIterable<StreamEventsRequest> {
      for (let n = 3; n <= 10; n++) yield { event: event(id, n) } as StreamEventsRequest;
    }
    const acks: bigint[] = [];
    for await (const r of client.streamEvents(events(), { headers: { authorization: `Bearer ${token}` } }))
      acks.push(r.ackedSequence);
    expect(acks.at(-1)).toBe(10n);
    await expect
      .poll(async () => (await getState(id, admin)).state?.version, { timeout: 20_000, interval: 100 })
      .toBe("10");
    expect((await getState(id, admin)).state.readings).toEqual({ pulse: 10 });
  });

  it("loses nothing and duplicates nothing when the devices process is SIGKILLed mid-stream", async () => {
    const { id, token } = await register();
    const total = 3000;
    const client = createClient(DeviceService, createGrpcTransport({ baseUrl: gateway }));
    const pid = (launcherLines(mesh.output(), "mesh ready")[0]!.pids as Record<string, number>).devices!;
    let acked = 0n;
    let killed = false;
    // The device: sends from after what was acknowledged, keeps everything unacknowledged, and
    // after a broken stream reconnects and resends it, until all `total` are acknowledged.
    for (let tries = 0; acked < BigInt(total) && tries < 200; tries++) {
      const from = Number(acked) + 1;
      async function* events(): AsyncIterable<StreamEventsRequest> {
        for (let n = from; n <= total; n++) yield { event: event(id, n) } as StreamEventsRequest;
      }
      try {
        for await (const r of client.streamEvents(events(), {
          headers: { authorization: `Bearer ${token}` },
          timeoutMs: 60_000,
        })) {
          acked = r.ackedSequence;
          if (!killed && acked >= 500n) {
            killed = true;
            process.kill(pid, "SIGKILL");
          }
        }
      } catch {
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    expect(killed).toBe(true);
    expect(isAlive(pid)).toBe(false);
    expect(acked).toBe(BigInt(total));
    await expect
      .poll(async () => (await getState(id, admin)).state?.version, { timeout: 60_000, interval: 250 })
      .toBe(String(total));
    // Every sequence exactly once in the history.
    const seen: number[] = [];
    let pageToken = "";
    do {
      const page = await post(
        "medmesh.devices.v1.DeviceService/ListDeviceEvents",
        { deviceId: id, pageSize: 500, pageToken },
        admin,
      );
      for (const e of page.body.events ?? []) seen.push(Number(e.sequence));
      pageToken = page.body.nextPageToken ?? "";
    } while (pageToken);
    expect(seen.length).toBe(total);
    expect(new Set(seen).size).toBe(total);
    expect(launcherLines(mesh.output(), "component restarted").some((l) => l.component === "devices")).toBe(true);
  }, 180_000);
});
