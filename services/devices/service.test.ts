import { randomBytes, randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { Kafka, logLevel } from "kafkajs";
import { startBroker } from "../../deploy/embedded/kafka/index.js";
import {
  DeviceEventSchema,
  DeviceService,
  EventOutcome,
  type DeviceEvent,
  type StreamEventsRequest,
} from "../../gen/medmesh/devices/v1/devices_pb.js";
import { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { backends, testEnv } from "../../test/support/backends.js";
import { startTestIdentity, type Persona, type TestIdentity } from "../../test/support/identity.js";
import { rejection } from "../../test/support/rejection.js";
import { startDevices } from "./main.js";
import { eventually as eventuallyDefined } from "../../test/support/eventually.js";

type DevicesClient = ReturnType<typeof createMeshClient<typeof DeviceService>>;

// A probe that fails (the service not up yet) counts as "not yet".
const eventually = <T>(what: string, probe: () => Promise<T | undefined>, timeoutMs?: number): Promise<T> =>
  eventuallyDefined(what, () => probe().catch(() => undefined), timeoutMs);

function event(
  deviceId: string,
  sequence: number,
  readings: Record<string, number> = {},
  at = new Date(),
): DeviceEvent {
  return create(DeviceEventSchema, {
    deviceId,
    sequence: BigInt(sequence),
    clientId: `c-${sequence}`,
    eventTime: timestampFromDate(at),
    readings: { pulse: 60 + sequence, ...readings },
  });
}

async function* streamOf(events: DeviceEvent[]): AsyncIterable<StreamEventsRequest> {
  for (const e of events) yield { event: e } as StreamEventsRequest;
}

/** Streams events and answers every acknowledgement the server sent. */
async function stream(client: DevicesClient, events: DeviceEvent[]): Promise<bigint[]> {
  const acks: bigint[] = [];
  for await (const r of client.streamEvents(streamOf(events))) acks.push(r.ackedSequence);
  return acks;
}

describe.each(backends())("devices on $name", (backend) => {
  const devicesKey = `mmk_${randomBytes(32).toString("base64url")}`;
  const suffix = randomBytes(4).toString("hex");
  const stops: Array<() => Promise<void>> = [];
  const clients: Array<{ close(): void }> = [];
  let identity: TestIdentity;
  let address: string;
  let brokerAddress: string;
  let identityClient: ReturnType<typeof createMeshClient<typeof IdentityService>>;

  const as = async (headers: { authorization: string }): Promise<DevicesClient> => {
    const c = createMeshClient(DeviceService, address, { headers, defaultTimeoutMs: 20_000 });
    clients.push(c);
    return c;
  };
  const user = async (who: Persona) => as(await identity.bearer(who));
  /** Registers a device as `who` and signs it in with its API key, as a device does. */
  const device = async (who: Persona = "doctor") => {
    const owner = await user(who);
    const reg = await owner.registerDevice({ name: `pulse ${suffix}`, type: "pulse-oximeter" });
    const { accessToken } = await identityClient.exchangeApiKey({ apiKey: reg.apiKey });
    return { id: reg.device!.id, owner, client: await as({ authorization: `Bearer ${accessToken}` }), reg };
  };

  beforeAll(async () => {
    const broker = await startBroker({ port: 0, dataDir: null, logLevel: "silent" });
    stops.unshift(() => broker.stop());
    brokerAddress = broker.address;
    identity = await startTestIdentity({ IDENTITY_BOOTSTRAP_API_KEYS: `devices=${devicesKey}` });
    stops.unshift(() => identity.stop());
    identityClient = createMeshClient(IdentityService, identity.target, { defaultTimeoutMs: 10_000 });
    clients.push(identityClient);
    const devices = await startDevices({
      ...testEnv,
      ...backend.env,
      DEVICES_PORT: "0",
      DEVICES_DB_SCHEMA: `devices_t${suffix}`,
      DEVICES_GROUP_ID: `devices-${suffix}`,
      KAFKA_BROKERS: broker.address,
      IDENTITY_TARGET: identity.target,
      DEVICES_API_KEY: devicesKey,
      DEVICES_MAX_BATCH: "50",
      DEVICES_MAX_EVENT_BYTES: "1KiB",
      DEVICES_RETRY_BASE_MS: "50",
    });
    stops.unshift(devices.stop);
    address = `127.0.0.1:${devices.port}`;
  }, 120_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    for (const stop of stops) await stop();
  });

  it("registers a device, shows its key once, streams events acknowledged in order, and serves its latest state", async () => {
    const { id, owner, client, reg } = await device();
    expect(reg.apiKey).toMatch(/^mmk_/);
    expect(reg.device!.apiKeyPrefix).toBe(reg.apiKey.slice(0, reg.device!.apiKeyPrefix.length));
    const acks = await stream(
      client,
      [1, 2, 3, 4, 5].map((n) => event(id, n, { spo2: 90 + n })),
    );
    // Acknowledgements only move forward and end at the last event.
    expect(acks.at(-1)).toBe(5n);
    expect([...acks].sort((a, b) => Number(a - b))).toEqual(acks);
    const state = await eventually("state at version 5", async () => {
      const s = (await owner.getDeviceState({ deviceId: id })).state!;
      return s.version === 5n ? s : undefined;
    });
    expect(state.readings).toEqual({ pulse: 65, spo2: 95 });
    const page = await owner.listDeviceEvents({ deviceId: id, pageSize: 3 });
    expect(page.events.map((e) => e.sequence)).toEqual([5n, 4n, 3n]);
    const rest = await owner.listDeviceEvents({ deviceId: id, pageSize: 3, pageToken: page.nextPageToken });
    expect(rest.events.map((e) => e.sequence)).toEqual([2n, 1n]);
    expect(rest.nextPageToken).toBe("");
    const listed = await owner.listDevices({});
    expect(listed.devices.map((d) => d.id)).toContain(id);
    const second = await device();
    const first = await owner.listDevices({ pageSize: 1 });
    expect(first.devices.map((d) => d.id)).toEqual([second.id]);
    expect(first.nextPageToken).not.toBe("");
    const next = await owner.listDevices({ pageSize: 1, pageToken: first.nextPageToken });
    expect(next.devices.map((d) => d.id)).toEqual([id]);
    // Another user's list cannot be continued with it.
    const err = await rejection((await user("doctor2")).listDevices({ pageSize: 1, pageToken: first.nextPageToken }));
    expect(err.code).toBe(Code.InvalidArgument);
  });

  it("takes a resend after a reconnect without duplicates, and acknowledges what it already holds", async () => {
    const { id, owner, client } = await device();
    expect(
      (
        await stream(
          client,
          [1, 2, 3, 4, 5, 6].map((n) => event(id, n)),
        )
      ).at(-1),
    ).toBe(6n);
    // The device lost its connection before it saw acknowledgements for 4..6: it sends them again, and more.
    expect(
      (
        await stream(
          client,
          [4, 5, 6, 7, 8].map((n) => event(id, n)),
        )
      ).at(-1),
    ).toBe(8n);
    const batch = await client.publishEvents({ events: [7, 8, 9].map((n) => event(id, n)) });
    expect(batch.results.map((r) => r.outcome)).toEqual([
      EventOutcome.DUPLICATE,
      EventOutcome.DUPLICATE,
      EventOutcome.ACCEPTED,
    ]);
    expect(batch.ackedSequence).toBe(9n);
    await eventually("version 9", async () =>
      (await owner.getDeviceState({ deviceId: id })).state!.version === 9n ? true : undefined,
    );
    const all = await owner.listDeviceEvents({ deviceId: id, pageSize: 100 });
    expect(all.events.map((e) => e.sequence)).toEqual([9n, 8n, 7n, 6n, 5n, 4n, 3n, 2n, 1n]);
  });

  it("refuses bad input with a status and a sentence", async () => {
    const { id, client } = await device();
    const other = await device();
    await stream(
      client,
      [1, 2].map((n) => event(id, n)),
    );

    // A gap: 4 without 3.
    let err = await rejection(stream(client, [event(id, 4)]));
    expect(err.code).toBe(Code.FailedPrecondition);
    expect(err.rawMessage).toMatch(/sequence: 4 skips 3; the server holds up to 2/);

    // A regression: sequence 2 again, but as another event.
    err = await rejection(stream(client, [create(DeviceEventSchema, { ...event(id, 2), clientId: "other" })]));
    expect(err.code).toBe(Code.FailedPrecondition);
    expect(err.rawMessage).toMatch(/2 was already used by the event with client_id "c-2"/);

    // Another device's events.
    err = await rejection(stream(client, [event(other.id, 1)]));
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.rawMessage).toMatch(/a device may publish only its own events/);
    err = await rejection(client.publishEvents({ events: [event(other.id, 1)] }));
    expect(err.code).toBe(Code.PermissionDenied);

    // Far in the future.
    err = await rejection(client.publishEvents({ events: [event(id, 3, {}, new Date(Date.now() + 3_600_000))] }));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(/events\[0\]\.event_time: .* is more than 300 s in the future/);

    // Too many events in a batch (the configured maximum is 50).
    err = await rejection(client.publishEvents({ events: Array.from({ length: 51 }, (_, i) => event(id, 3 + i)) }));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(/51 events is more than the 50 one batch may carry/);

    // An event over the size limit (1 KiB here).
    const big: Record<string, number> = {};
    for (let i = 0; i < 60; i++) big[`reading_with_a_long_name_${i}`] = i;
    err = await rejection(client.publishEvents({ events: [event(id, 3, big)] }));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(/bytes encoded, more than the 1024 bytes an event may have/);

    // Fields this server does not know (a newer client's field 99).
    const unknown = event(id, 3);
    unknown.$unknown = [{ no: 99, wireType: 0, data: new Uint8Array([1]) }];
    expect(toBinary(DeviceEventSchema, unknown).byteLength).toBeGreaterThan(
      toBinary(DeviceEventSchema, event(id, 3)).byteLength,
    );
    err = await rejection(client.publishEvents({ events: [unknown] }));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(/carries fields this server does not know/);

    // The contract's rules: a sequence of 0, a missing time, a reading that is not a number.
    err = await rejection(
      client.publishEvents({ events: [create(DeviceEventSchema, { ...event(id, 3), sequence: 0n })] }),
    );
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(/sequence/);
    err = await rejection(
      client.publishEvents({ events: [create(DeviceEventSchema, { ...event(id, 3), eventTime: undefined })] }),
    );
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(/event_time/);
    err = await rejection(client.publishEvents({ events: [event(id, 3, { spo2: Number.NaN })] }));
    expect(err.code).toBe(Code.InvalidArgument);

    // In a batch, the event after a refused one is not tried.
    const mixed = await client.publishEvents({ events: [event(id, 3), event(id, 5), event(id, 6)] });
    expect(mixed.results.map((r) => r.outcome)).toEqual([
      EventOutcome.ACCEPTED,
      EventOutcome.REJECTED,
      EventOutcome.NOT_TRIED,
    ]);
    expect(mixed.results[1]!.message).toMatch(/5 skips 4/);
    expect(mixed.ackedSequence).toBe(3n);
  });

  it("keeps devices and their states to their owners (IDOR)", async () => {
    const { id, owner, client } = await device("doctor");
    const other = await device("doctor2");
    await stream(client, [event(id, 1)]);
    await eventually("state", async () =>
      (await owner.getDeviceState({ deviceId: id })).state!.version === 1n ? true : undefined,
    );
    const stranger = await user("doctor2");
    for (const call of [
      () => stranger.getDeviceState({ deviceId: id }),
      () => stranger.listDeviceEvents({ deviceId: id }),
      () => stranger.getDevice({ id }),
      () => stranger.revokeDevice({ id }),
      () => stranger.deleteDevice({ id }),
      () => other.client.getDeviceState({ deviceId: id }),
      () => other.client.listDeviceEvents({ deviceId: id }),
    ]) {
      const err = await rejection(call());
      expect(err.code).toBe(Code.NotFound);
      expect(err.rawMessage).toBe(`device ${id} not found`);
    }
    expect((await stranger.listDevices({})).devices.map((d) => d.id)).not.toContain(id);
    // The device reads its own state; an admin reads anyone's.
    expect((await client.getDeviceState({ deviceId: id })).state!.version).toBe(1n);
    expect((await (await user("admin")).getDeviceState({ deviceId: id })).state!.version).toBe(1n);
    // Users cannot publish, devices cannot register.
    expect((await rejection(owner.publishEvents({ events: [event(id, 2)] }))).code).toBe(Code.PermissionDenied);
    expect((await rejection(client.registerDevice({ name: "x", type: "x" }))).code).toBe(Code.PermissionDenied);
    const unknownId = randomUUID();
    const err = await rejection(owner.getDeviceState({ deviceId: unknownId }));
    expect(err.code).toBe(Code.NotFound);
  });

  it("leaves device keys to the devices service at identity", async () => {
    const deviceId = randomUUID();
    const other = await identity.serviceBearer(`other-${suffix}`);
    let err = await rejection(identityClient.issueDeviceApiKey({ deviceId }, { headers: other }));
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.rawMessage).toBe("only the devices service manages device keys");
    err = await rejection(identityClient.revokeDeviceApiKeys({ deviceId }, { headers: other }));
    expect(err.code).toBe(Code.PermissionDenied);
    err = await rejection(identityClient.issueDeviceApiKey({ deviceId }, { headers: await identity.bearer("admin") }));
    expect(err.code).toBe(Code.PermissionDenied);
  });

  it("refuses a revoked device's events and its key", async () => {
    const { id, owner, client, reg } = await device();
    await stream(client, [event(id, 1)]);
    const revoked = await owner.revokeDevice({ id });
    expect(revoked.device!.revokeTime).toBeDefined();
    const err = await rejection(client.publishEvents({ events: [event(id, 2)] }));
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.rawMessage).toMatch(/has been revoked/);
    expect((await rejection(identityClient.exchangeApiKey({ apiKey: reg.apiKey }))).code).toBe(Code.Unauthenticated);
    await owner.deleteDevice({ id });
    expect((await rejection(owner.getDevice({ id }))).code).toBe(Code.NotFound);
  });

  it("dead-letters a malformed event with its reason, and the partition moves on", async () => {
    const { id, owner, client } = await device();
    const kafka = new Kafka({ brokers: [brokerAddress], clientId: "poison", logLevel: logLevel.NOTHING });
    const producer = kafka.producer();
    await producer.connect();
    // Same key as the device, so it sits in the device's partition ahead of its next events.
    await producer.send({
      topic: "device.events",
      messages: [{ key: id, value: Buffer.from("not a protobuf event") }],
    });
    await producer.disconnect();
    await stream(client, [event(id, 1)]);
    await eventually("the event after the poison applied", async () =>
      (await owner.getDeviceState({ deviceId: id })).state!.version === 1n ? true : undefined,
    );
    const consumer = kafka.consumer({ groupId: `dlq-reader-${randomUUID()}` });
    await consumer.connect();
    await consumer.subscribe({ topic: "device.events.dlq", fromBeginning: true });
    const reason = await new Promise<string>((resolve) => {
      void consumer.run({
        eachMessage: async ({ message }) => {
          if (message.key?.toString() === id) resolve(String(message.headers?.dlq_error_message));
        },
      });
    });
    await consumer.disconnect();
    expect(reason).toMatch(/missing header ce_specversion/);
  });
});
