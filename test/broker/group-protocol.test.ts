import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startBroker, type RunningBroker } from "../../deploy/embedded/kafka/index.js";
import type { Reader } from "../../deploy/embedded/kafka/protocol/reader.js";
import { Writer } from "../../deploy/embedded/kafka/protocol/writer.js";
import { RawClient, createTopicsBody } from "./helpers.js";

const API = {
  OffsetCommit: 8,
  OffsetFetch: 9,
  JoinGroup: 11,
  Heartbeat: 12,
  LeaveGroup: 13,
  SyncGroup: 14,
  DescribeGroups: 15,
  ListGroups: 16,
  CreateTopics: 19,
};

let broker: RunningBroker;
const clients: RawClient[] = [];

beforeAll(async () => {
  broker = await startBroker({ port: 0, groupMinSessionTimeoutMs: 100 });
  const c = await connect();
  await c.request(API.CreateTopics, 3, createTopicsBody("grp-topic", 2));
});

afterAll(async () => {
  for (const c of clients) c.close();
  await broker.stop();
});

async function connect(): Promise<RawClient> {
  const c = await RawClient.connect(broker.address);
  clients.push(c);
  return c;
}

interface JoinAnswer {
  error: number;
  generation: number;
  protocol: string;
  leader: string;
  memberId: string;
  members: { memberId: string; metadata: string }[];
}

function joinBody(
  group: string,
  memberId: string,
  opts: { session?: number; rebalance?: number; protocols?: string[] } = {},
): Writer {
  const w = new Writer()
    .string(group)
    .int32(opts.session ?? 10_000)
    .int32(opts.rebalance ?? 10_000)
    .string(memberId)
    .string("consumer");
  w.array(opts.protocols ?? ["range"], (w, p) => w.string(p).bytes(Buffer.from(`meta-${p}`)));
  return w;
}

function readJoin(r: Reader): JoinAnswer {
  r.int32();
  return {
    error: r.int16(),
    generation: r.int32(),
    protocol: r.string(),
    leader: r.string(),
    memberId: r.string(),
    members: r.array((r) => ({ memberId: r.string(), metadata: r.bytes().toString() })),
  };
}

async function join(
  c: RawClient,
  group: string,
  memberId: string,
  opts: Parameters<typeof joinBody>[2] = {},
): Promise<JoinAnswer> {
  return readJoin(await c.request(API.JoinGroup, 4, joinBody(group, memberId, opts)));
}

/** JoinGroup v4 twice, as a real client does: first to learn its member id. */
async function joinNew(c: RawClient, group: string, opts: Parameters<typeof joinBody>[2] = {}): Promise<JoinAnswer> {
  const first = await join(c, group, "", opts);
  expect(first.error).toBe(79);
  expect(first.memberId).not.toBe("");
  return join(c, group, first.memberId, opts);
}

async function sync(
  c: RawClient,
  group: string,
  generation: number,
  memberId: string,
  assignments: [string, string][] = [],
): Promise<{ error: number; assignment: string }> {
  const w = new Writer().string(group).int32(generation).string(memberId);
  w.array(assignments, (w, [m, a]) => w.string(m).bytes(Buffer.from(a)));
  const r = await c.request(API.SyncGroup, 2, w);
  r.int32();
  return { error: r.int16(), assignment: r.bytes().toString() };
}

async function heartbeat(c: RawClient, group: string, generation: number, memberId: string): Promise<number> {
  const r = await c.request(API.Heartbeat, 2, new Writer().string(group).int32(generation).string(memberId));
  r.int32();
  return r.int16();
}

async function commit(
  c: RawClient,
  group: string,
  generation: number,
  memberId: string,
  offset: number,
): Promise<number> {
  const w = new Writer().string(group).int32(generation).string(memberId).int64(-1);
  w.array(["grp-topic"], (w, t) => {
    w.string(t);
    w.array([0], (w, p) => w.int32(p).int64(offset).nullableString("meta"));
  });
  const r = await c.request(API.OffsetCommit, 4, w);
  r.int32();
  r.int32();
  r.string();
  r.int32();
  r.int32();
  return r.int16();
}

async function fetchCommitted(c: RawClient, group: string): Promise<{ offset: number; metadata: string | null }> {
  const w = new Writer().string(group);
  w.array(["grp-topic"], (w, t) => {
    w.string(t);
    w.array([0], (w, p) => w.int32(p));
  });
  const r = await c.request(API.OffsetFetch, 4, w);
  r.int32();
  r.int32();
  r.string();
  r.int32();
  r.int32();
  return { offset: r.int64(), metadata: r.nullableString() };
}

async function describe1(c: RawClient, group: string): Promise<{ state: string; members: number }> {
  const w = new Writer();
  w.array([group], (w, g) => w.string(g));
  const r = await c.request(API.DescribeGroups, 2, w);
  r.int32();
  r.int32();
  r.int16();
  r.string();
  const state = r.string();
  r.string();
  r.string();
  const members = r.array((r) => [r.string(), r.string(), r.string(), r.bytes(), r.bytes()]).length;
  return { state, members };
}

describe("consumer group coordinator", () => {
  it("JoinGroup v4 requires a member id first, then elects the sole member leader", async () => {
    const c = await connect();
    const j = await joinNew(c, "g-single");
    expect(j.error).toBe(0);
    expect(j.generation).toBe(1);
    expect(j.leader).toBe(j.memberId);
    expect(j.protocol).toBe("range");
    expect(j.members).toEqual([{ memberId: j.memberId, metadata: "meta-range" }]);
    const s = await sync(c, "g-single", 1, j.memberId, [[j.memberId, "all-yours"]]);
    expect(s).toEqual({ error: 0, assignment: "all-yours" });
    expect(await heartbeat(c, "g-single", 1, j.memberId)).toBe(0);
    expect(await describe1(c, "g-single")).toEqual({ state: "Stable", members: 1 });
  });

  it("JoinGroup v0-v3 assign the member id directly", async () => {
    const c = await connect();
    const r = readJoin(await c.request(API.JoinGroup, 2, joinBody("g-old", "")));
    expect(r.error).toBe(0);
    expect(r.memberId).not.toBe("");
    const v0 = new Writer().string("g-old-v0").int32(10_000).string("").string("consumer");
    v0.array(["range"], (w, p) => w.string(p).bytes(Buffer.from("m")));
    const r0 = await c.request(API.JoinGroup, 0, v0);
    expect(r0.int16()).toBe(0);
  });

  it("holds JoinGroup until every known member rejoins; only the leader gets the member list; SyncGroup hands out each assignment", async () => {
    const ca = await connect();
    const cb = await connect();
    const a1 = await joinNew(ca, "g-two");
    await sync(ca, "g-two", a1.generation, a1.memberId, [[a1.memberId, "a-only"]]);

    // B's join starts a rebalance and is held until A rejoins.
    const bFirst = await join(cb, "g-two", "");
    const bJoin = join(cb, "g-two", bFirst.memberId);
    expect(await heartbeat(ca, "g-two", a1.generation, a1.memberId)).toBe(27);
    const a2 = await join(ca, "g-two", a1.memberId);
    const b2 = await bJoin;
    expect(a2.generation).toBe(a1.generation + 1);
    expect(b2.generation).toBe(a2.generation);
    expect(a2.leader).toBe(a1.memberId);
    expect(a2.members.map((m) => m.memberId).sort()).toEqual([a1.memberId, b2.memberId].sort());
    expect(b2.members).toEqual([]);

    // Joined but not yet synced is a healthy state: no reason to rejoin.
    expect(await heartbeat(cb, "g-two", b2.generation, b2.memberId)).toBe(0);
    // The follower's SyncGroup waits for the leader's assignments.
    const bSync = sync(cb, "g-two", b2.generation, b2.memberId);
    const aSync = await sync(ca, "g-two", a2.generation, a2.memberId, [
      [a2.memberId, "part-0"],
      [b2.memberId, "part-1"],
    ]);
    expect(aSync).toEqual({ error: 0, assignment: "part-0" });
    expect(await bSync).toEqual({ error: 0, assignment: "part-1" });

    // Old generation and unknown members get the errors clients key their recovery on.
    expect(await heartbeat(ca, "g-two", a1.generation, a1.memberId)).toBe(22);
    expect(await heartbeat(ca, "g-two", a2.generation, "nobody")).toBe(25);
    expect((await sync(ca, "g-two", a1.generation, a1.memberId)).error).toBe(22);
    expect((await join(ca, "g-two", "nobody")).error).toBe(25);
  });

  it("rejects a member whose protocols share nothing with the group", async () => {
    const ca = await connect();
    const cb = await connect();
    await joinNew(ca, "g-proto", { protocols: ["range"] });
    const b = await join(cb, "g-proto", "", { protocols: ["cooperative-sticky"] });
    expect(b.error).toBe(23);
  });

  it("evicts a member that stops heartbeating after its session timeout", async () => {
    const ca = await connect();
    const cb = await connect();
    const a = await joinNew(ca, "g-expire", { session: 5000 });
    await sync(ca, "g-expire", a.generation, a.memberId);
    const bFirst = await join(cb, "g-expire", "", { session: 300 });
    const bJoin = join(cb, "g-expire", bFirst.memberId, { session: 300 });
    const a2 = await join(ca, "g-expire", a.memberId, { session: 5000 });
    const b2 = await bJoin;
    const bSync = sync(cb, "g-expire", b2.generation, b2.memberId);
    await sync(ca, "g-expire", a2.generation, a2.memberId);
    await bSync;
    // B now goes silent. A keeps heartbeating until the coordinator asks it to rejoin.
    let error = 0;
    while (error === 0) {
      error = await heartbeat(ca, "g-expire", a2.generation, a2.memberId);
      if (error === 0) await new Promise((r) => setTimeout(r, 50));
    }
    expect(error).toBe(27);
    const a3 = await join(ca, "g-expire", a.memberId, { session: 5000 });
    expect(a3.error).toBe(0);
    expect(a3.members.map((m) => m.memberId)).toEqual([a.memberId]);
    expect(await heartbeat(cb, "g-expire", b2.generation, b2.memberId)).toBe(25);
  });

  it("drops members that do not rejoin within the rebalance timeout", async () => {
    const ca = await connect();
    const cb = await connect();
    const a = await joinNew(ca, "g-rebalance-timeout", { session: 10_000, rebalance: 300 });
    await sync(ca, "g-rebalance-timeout", a.generation, a.memberId);
    // A never rejoins, so B's join completes at the rebalance timeout with B alone.
    const b = await joinNew(cb, "g-rebalance-timeout", { session: 10_000, rebalance: 300 });
    expect(b.error).toBe(0);
    expect(b.leader).toBe(b.memberId);
    expect(b.members.map((m) => m.memberId)).toEqual([b.memberId]);
    expect(await heartbeat(ca, "g-rebalance-timeout", a.generation, a.memberId)).toBe(25);
  });

  it("LeaveGroup v3 removes a batch of members and reports unknown ones", async () => {
    const c = await connect();
    const a = await joinNew(c, "g-leave");
    const w = new Writer().string("g-leave");
    w.array([a.memberId, "ghost"], (w, m) => w.string(m).nullableString(null));
    const r = await c.request(API.LeaveGroup, 3, w);
    r.int32();
    expect(r.int16()).toBe(0);
    const members = r.array((r) => ({ id: r.string(), instance: r.nullableString(), error: r.int16() }));
    expect(members).toEqual([
      { id: a.memberId, instance: null, error: 0 },
      { id: "ghost", instance: null, error: 25 },
    ]);
    expect(await describe1(c, "g-leave")).toEqual({ state: "Empty", members: 0 });
  });

  it("applies Kafka's OffsetCommit rules and persists metadata", async () => {
    const c = await connect();
    // A group with no members accepts "simple" commits (generation -1).
    expect(await commit(c, "g-commit", -1, "", 42)).toBe(0);
    expect(await fetchCommitted(c, "g-commit")).toEqual({ offset: 42, metadata: "meta" });
    const a = await joinNew(c, "g-commit");
    expect(await commit(c, "g-commit", a.generation, a.memberId, 43)).toBe(27); // awaiting SyncGroup
    await sync(c, "g-commit", a.generation, a.memberId);
    expect(await commit(c, "g-commit", a.generation, a.memberId, 44)).toBe(0);
    expect(await commit(c, "g-commit", a.generation + 5, a.memberId, 45)).toBe(22);
    expect(await commit(c, "g-commit", a.generation, "stranger", 46)).toBe(25);
    expect(await fetchCommitted(c, "g-commit")).toEqual({ offset: 44, metadata: "meta" });
    // Nothing committed: offset -1 with an empty, non-null metadata string.
    expect(await fetchCommitted(c, "g-never")).toEqual({ offset: -1, metadata: "" });
  });

  it("ListGroups includes groups that only hold committed offsets", async () => {
    const c = await connect();
    expect(await commit(c, "g-offsets-only", -1, "", 1)).toBe(0);
    const r = await c.request(API.ListGroups, 2, Buffer.alloc(0));
    r.int32();
    expect(r.int16()).toBe(0);
    const groups = r.array((r) => ({ id: r.string(), type: r.string() }));
    expect(groups).toEqual(
      expect.arrayContaining([
        { id: "g-offsets-only", type: "" },
        { id: "g-single", type: "consumer" },
      ]),
    );
  });
});

describe("initial rebalance delay", () => {
  it("lets members of a new group that join together land in the first generation", async () => {
    const delayed = await startBroker({ port: 0, groupInitialRebalanceDelayMs: 300 });
    const ca = await RawClient.connect(delayed.address);
    const cb = await RawClient.connect(delayed.address);
    try {
      const joinV2 = async (c: RawClient): Promise<JoinAnswer> =>
        readJoin(await c.request(API.JoinGroup, 2, joinBody("g-delayed", "")));
      const [a, b] = await Promise.all([joinV2(ca), joinV2(cb)]);
      expect(a.error).toBe(0);
      expect(b.error).toBe(0);
      expect([a.generation, b.generation]).toEqual([1, 1]);
      const leader = a.leader === a.memberId ? a : b;
      expect(leader.members.map((m) => m.memberId).sort()).toEqual([a.memberId, b.memberId].sort());
    } finally {
      ca.close();
      cb.close();
      await delayed.stop();
    }
  });
});
