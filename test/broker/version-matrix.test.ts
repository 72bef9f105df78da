import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startBroker, type RunningBroker } from "../../deploy/embedded/kafka/index.js";
import type { Reader } from "../../deploy/embedded/kafka/protocol/reader.js";
import { Writer } from "../../deploy/embedded/kafka/protocol/writer.js";
import { RawClient, batchOffsets, buildBatch } from "./helpers.js";

/**
 * Every advertised version of every API, encoded by hand from the Kafka message schemas and decoded
 * strictly: a response must be consumed to its last byte, so one misplaced field at one version fails.
 */

let broker: RunningBroker;
let c: RawClient;
const range = (a: number, b: number): number[] => Array.from({ length: b - a + 1 }, (_, i) => a + i);

beforeAll(async () => {
  broker = await startBroker({ port: 0 });
  c = await RawClient.connect(broker.address);
});

afterAll(async () => {
  c.close();
  await broker.stop();
});

function strings(w: Writer, items: string[]): Writer {
  return w.array(items, (w, s) => w.string(s));
}

function done(r: Reader): void {
  expect(r.remaining).toBe(0);
}

describe("every advertised version decodes and answers in its own layout", () => {
  it("CreateTopics v0-v3 and DeleteTopics v0-v1", async () => {
    for (const v of range(0, 3)) {
      const w = new Writer();
      w.array([`mx-topic-${v}`], (w, n) => {
        w.string(n).int32(2).int16(1);
        w.array([] as number[], () => {});
        w.array([{ name: "retention.ms", value: "60000" }], (w, cfg) => w.string(cfg.name).nullableString(cfg.value));
      });
      w.int32(1000);
      if (v >= 1) w.bool(false);
      const r = await c.request(19, v, w);
      if (v >= 2) expect(r.int32()).toBe(0);
      const topics = r.array((r) => ({
        name: r.string(),
        error: r.int16(),
        message: v >= 1 ? r.nullableString() : null,
      }));
      expect(topics).toEqual([{ name: `mx-topic-${v}`, error: 0, message: null }]);
      done(r);
    }
    for (const v of range(0, 1)) {
      const r = await c.request(20, v, strings(new Writer(), [`mx-topic-${v}`]).int32(1000));
      if (v >= 1) expect(r.int32()).toBe(0);
      expect(r.array((r) => [r.string(), r.int16()])).toEqual([[`mx-topic-${v}`, 0]]);
      done(r);
    }
  });

  it("Metadata v1-v6", async () => {
    for (const v of range(1, 6)) {
      const w = strings(new Writer(), ["mx-topic-2"]);
      if (v >= 4) w.bool(true);
      const r = await c.request(3, v, w);
      if (v >= 3) expect(r.int32()).toBe(0);
      expect(r.array((r) => [r.int32(), r.string(), r.int32(), r.nullableString()])).toEqual([
        [1, broker.host, broker.port, null],
      ]);
      if (v >= 2) expect(r.nullableString()).toBe("medmesh-embedded");
      expect(r.int32()).toBe(1);
      const topics = r.array((r) => ({
        error: r.int16(),
        name: r.string(),
        internal: r.bool(),
        partitions: r.array((r) => ({
          error: r.int16(),
          index: r.int32(),
          leader: r.int32(),
          replicas: r.array((r) => r.int32()),
          isr: r.array((r) => r.int32()),
          offline: v >= 5 ? r.array((r) => r.int32()) : [],
        })),
      }));
      expect(topics).toEqual([
        {
          error: 0,
          name: "mx-topic-2",
          internal: false,
          partitions: [0, 1].map((index) => ({ error: 0, index, leader: 1, replicas: [1], isr: [1], offline: [] })),
        },
      ]);
      done(r);
    }
  });

  it("Produce v3-v7 and Fetch v4-v11", async () => {
    let expectedOffset = 0;
    for (const v of range(3, 7)) {
      const body = new Writer().nullableString(null).int16(-1).int32(1000);
      body.array(["mx-topic-2"], (w, t) => {
        w.string(t);
        w.array([0], (w, p) => w.int32(p).nullableBytes(buildBatch([{ value: `produce-v${v}` }, { value: "second" }])));
      });
      const r = await c.request(0, v, body);
      const topics = r.array((r) => ({
        name: r.string(),
        partitions: r.array((r) => ({
          index: r.int32(),
          error: r.int16(),
          baseOffset: r.int64(),
          logAppendTime: r.int64(),
          logStart: v >= 5 ? r.int64() : 0,
        })),
      }));
      expect(topics).toEqual([
        {
          name: "mx-topic-2",
          partitions: [{ index: 0, error: 0, baseOffset: expectedOffset, logAppendTime: -1, logStart: 0 }],
        },
      ]);
      expect(r.int32()).toBe(0);
      done(r);
      expectedOffset += 2;
    }
    for (const v of range(4, 11)) {
      const w = new Writer()
        .int32(-1)
        .int32(0)
        .int32(1)
        .int32(1 << 20)
        .int8(1);
      if (v >= 7) w.int32(0).int32(-1);
      w.array(["mx-topic-2"], (w, t) => {
        w.string(t);
        w.array([0], (w, p) => {
          w.int32(p);
          if (v >= 9) w.int32(-1);
          w.int64(3);
          if (v >= 5) w.int64(-1);
          w.int32(1 << 20);
        });
      });
      if (v >= 7) w.array([] as string[], () => {});
      if (v >= 11) w.string("");
      const r = await c.request(1, v, w);
      expect(r.int32()).toBe(0);
      if (v >= 7) {
        expect(r.int16()).toBe(0);
        expect(r.int32()).toBe(0);
      }
      const topics = r.array((r) => ({
        name: r.string(),
        partitions: r.array((r) => ({
          index: r.int32(),
          error: r.int16(),
          hwm: r.int64(),
          lso: r.int64(),
          logStart: v >= 5 ? r.int64() : 0,
          aborted: r.nullableArray((r) => [r.int64(), r.int64()]),
          preferred: v >= 11 ? r.int32() : -1,
          batches: batchOffsets(Buffer.from(r.nullableBytes()!)),
        })),
      }));
      expect(topics).toEqual([
        {
          name: "mx-topic-2",
          partitions: [
            {
              index: 0,
              error: 0,
              hwm: 10,
              lso: 10,
              logStart: 0,
              aborted: [],
              preferred: -1,
              // Offset 3 is the second record of the batch at 2: that whole batch comes back.
              batches: [2, 4, 6, 8].map((b) => ({ baseOffset: b, lastOffset: b + 1 })),
            },
          ],
        },
      ]);
      done(r);
    }
  });

  it("ListOffsets v1-v3", async () => {
    for (const v of range(1, 3)) {
      const w = new Writer().int32(-1);
      if (v >= 2) w.int8(0);
      w.array(["mx-topic-2"], (w, t) => {
        w.string(t);
        w.array([-1, -2], (w, ts) => w.int32(0).int64(ts));
      });
      const r = await c.request(2, v, w);
      if (v >= 2) expect(r.int32()).toBe(0);
      const topics = r.array((r) => ({
        name: r.string(),
        partitions: r.array((r) => [r.int32(), r.int16(), r.int64(), r.int64()]),
      }));
      expect(topics).toEqual([
        {
          name: "mx-topic-2",
          partitions: [
            [0, 0, -1, 10],
            [0, 0, -1, 0],
          ],
        },
      ]);
      done(r);
    }
  });

  it("FindCoordinator v0-v2", async () => {
    for (const v of range(0, 2)) {
      const w = new Writer().string("mx-group");
      if (v >= 1) w.int8(0);
      const r = await c.request(10, v, w);
      if (v >= 1) expect(r.int32()).toBe(0);
      expect(r.int16()).toBe(0);
      if (v >= 1) expect(r.nullableString()).toBeNull();
      expect([r.int32(), r.string(), r.int32()]).toEqual([1, broker.host, broker.port]);
      done(r);
    }
  });

  it("JoinGroup v0-v5 with SyncGroup, Heartbeat and LeaveGroup v0-v3", async () => {
    for (const v of range(0, 5)) {
      const group = `mx-group-${v}`;
      const sub = Math.min(v, 3);
      const joinBody = (memberId: string): Writer => {
        const w = new Writer().string(group).int32(10_000);
        if (v >= 1) w.int32(10_000);
        w.string(memberId);
        if (v >= 5) w.nullableString(null);
        w.string("consumer");
        return w.array(["range"], (w, p) => w.string(p).bytes(Buffer.from("meta")));
      };
      const readJoin = (r: Reader) => {
        if (v >= 2) expect(r.int32()).toBe(0);
        const out = {
          error: r.int16(),
          generation: r.int32(),
          protocol: r.string(),
          leader: r.string(),
          memberId: r.string(),
          members: r.array((r) => ({
            id: r.string(),
            instance: v >= 5 ? r.nullableString() : null,
            meta: r.bytes().toString(),
          })),
        };
        done(r);
        return out;
      };
      let j = readJoin(await c.request(11, v, joinBody("")));
      if (v >= 4) {
        expect(j.error).toBe(79);
        j = readJoin(await c.request(11, v, joinBody(j.memberId)));
      }
      expect(j).toMatchObject({ error: 0, generation: 1, protocol: "range", leader: j.memberId });
      expect(j.members).toEqual([{ id: j.memberId, instance: null, meta: "meta" }]);

      const sw = new Writer().string(group).int32(1).string(j.memberId);
      if (sub >= 3) sw.nullableString(null);
      sw.array([j.memberId], (w, m) => w.string(m).bytes(Buffer.from(`assigned-${v}`)));
      const s = await c.request(14, sub, sw);
      if (sub >= 1) expect(s.int32()).toBe(0);
      expect([s.int16(), s.bytes().toString()]).toEqual([0, `assigned-${v}`]);
      done(s);

      const hw = new Writer().string(group).int32(1).string(j.memberId);
      if (sub >= 3) hw.nullableString(null);
      const h = await c.request(12, sub, hw);
      if (sub >= 1) expect(h.int32()).toBe(0);
      expect(h.int16()).toBe(0);
      done(h);

      const lw = new Writer().string(group);
      if (sub >= 3) lw.array([j.memberId], (w, m) => w.string(m).nullableString(null));
      else lw.string(j.memberId);
      const l = await c.request(13, sub, lw);
      if (sub >= 1) expect(l.int32()).toBe(0);
      expect(l.int16()).toBe(0);
      if (sub >= 3)
        expect(l.array((r) => [r.string(), r.nullableString(), r.int16()])).toEqual([[j.memberId, null, 0]]);
      done(l);
    }
  });

  it("OffsetCommit v0-v5 and OffsetFetch v1-v4", async () => {
    for (const v of range(0, 5)) {
      const w = new Writer().string("mx-offsets");
      if (v >= 1) w.int32(-1).string("");
      if (v >= 2 && v <= 4) w.int64(-1);
      w.array(["mx-topic-2"], (w, t) => {
        w.string(t);
        w.array([0], (w, p) => {
          w.int32(p).int64(100 + v);
          if (v === 1) w.int64(-1);
          w.nullableString(`v${v}`);
        });
      });
      const r = await c.request(8, v, w);
      if (v >= 3) expect(r.int32()).toBe(0);
      expect(r.array((r) => [r.string(), r.array((r) => [r.int32(), r.int16()])])).toEqual([["mx-topic-2", [[0, 0]]]]);
      done(r);
    }
    for (const v of range(1, 4)) {
      const w = new Writer().string("mx-offsets");
      w.array(["mx-topic-2"], (w, t) => {
        w.string(t);
        w.array([0, 1], (w, p) => w.int32(p));
      });
      const r = await c.request(9, v, w);
      if (v >= 3) expect(r.int32()).toBe(0);
      expect(
        r.array((r) => [r.string(), r.array((r) => [r.int32(), r.int64(), r.nullableString(), r.int16()])]),
      ).toEqual([
        [
          "mx-topic-2",
          [
            [0, 105, "v5", 0],
            [1, -1, "", 0],
          ],
        ],
      ]);
      if (v >= 2) expect(r.int16()).toBe(0);
      done(r);
    }
    // v2+: a null topic list means every partition the group has committed.
    const all = await c.request(9, 4, new Writer().string("mx-offsets").int32(-1));
    expect(all.int32()).toBe(0);
    expect(
      all.array((r) => [r.string(), r.array((r) => [r.int32(), r.int64(), r.nullableString(), r.int16()])]),
    ).toEqual([["mx-topic-2", [[0, 105, "v5", 0]]]]);
    expect(all.int16()).toBe(0);
    done(all);
  });

  it("DescribeGroups v0-v2, ListGroups v0-v2, InitProducerId v0-v1", async () => {
    for (const v of range(0, 2)) {
      const r = await c.request(15, v, strings(new Writer(), ["mx-offsets", "mx-nobody"]));
      if (v >= 1) expect(r.int32()).toBe(0);
      const groups = r.array((r) => ({
        error: r.int16(),
        id: r.string(),
        state: r.string(),
        type: r.string(),
        protocol: r.string(),
        members: r.array((r) => [r.string(), r.string(), r.string(), r.bytes(), r.bytes()]),
      }));
      expect(groups.map((g) => [g.id, g.error, g.state])).toEqual([
        ["mx-offsets", 0, "Empty"],
        ["mx-nobody", 0, "Dead"],
      ]);
      done(r);
    }
    for (const v of range(0, 2)) {
      const r = await c.request(16, v, Buffer.alloc(0));
      if (v >= 1) expect(r.int32()).toBe(0);
      expect(r.int16()).toBe(0);
      const groups = r.array((r) => [r.string(), r.string()]);
      expect(groups).toEqual(
        expect.arrayContaining([
          ["mx-offsets", ""],
          ["mx-group-0", "consumer"],
        ]),
      );
      done(r);
    }
    for (const v of range(0, 1)) {
      const r = await c.request(22, v, new Writer().nullableString(null).int32(1000));
      expect(r.int32()).toBe(0);
      expect(r.int16()).toBe(0);
      expect(r.int64()).toBeGreaterThan(0);
      expect(r.int16()).toBe(0);
      done(r);
    }
  });
});
