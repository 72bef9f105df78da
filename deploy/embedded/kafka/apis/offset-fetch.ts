import { Writer } from "../protocol/writer.js";
import { defineApi } from "./types.js";

interface OffsetFetchRequest {
  groupId: string;
  topics: { name: string; partitions: number[] }[] | null;
}

export const offsetFetchApi = defineApi<OffsetFetchRequest>({
  key: 9,
  name: "OffsetFetch",
  minVersion: 1,
  maxVersion: 4,
  decode(r, version) {
    const groupId = r.string();
    const topics =
      version >= 2
        ? r.nullableArray((r) => ({ name: r.string(), partitions: r.array((r) => r.int32()) }))
        : r.array((r) => ({ name: r.string(), partitions: r.array((r) => r.int32()) }));
    return { groupId, topics };
  },
  handle(req, ctx) {
    const v = ctx.apiVersion;
    const offsets = ctx.broker.offsets;
    let answers: { name: string; partitions: { index: number; offset: number; metadata: string }[] }[];
    if (req.topics === null) {
      const byTopic = new Map<string, { index: number; offset: number; metadata: string }[]>();
      for (const { topic, partition, committed } of offsets.all(req.groupId)) {
        let list = byTopic.get(topic);
        if (!list) byTopic.set(topic, (list = []));
        list.push({ index: partition, offset: committed.offset, metadata: committed.metadata });
      }
      answers = [...byTopic].map(([name, partitions]) => ({ name, partitions }));
    } else {
      answers = req.topics.map((t) => ({
        name: t.name,
        partitions: t.partitions.map((index) => {
          const c = offsets.get(req.groupId, t.name, index);
          // Some clients choke on a null metadata string, so "nothing committed" is (-1, "").
          return { index, offset: c ? c.offset : -1, metadata: c ? c.metadata : "" };
        }),
      }));
    }
    const w = new Writer();
    if (v >= 3) w.int32(0);
    w.array(answers, (w, t) => {
      w.string(t.name);
      w.array(t.partitions, (w, p) => w.int32(p.index).int64(p.offset).nullableString(p.metadata).int16(0));
    });
    if (v >= 2) w.int16(0);
    return w;
  },
});
