import { ErrorCode } from "../protocol/errors.js";
import { Writer } from "../protocol/writer.js";
import { defineApi } from "./types.js";

interface MetadataRequest {
  topics: string[] | null;
  allowAutoTopicCreation: boolean;
}

interface TopicAnswer {
  error: number;
  name: string;
  partitions: number[];
}

export const metadataApi = defineApi<MetadataRequest>({
  key: 3,
  name: "Metadata",
  minVersion: 1,
  maxVersion: 6,
  decode(r, version) {
    const topics = r.nullableArray((r) => r.string());
    const allowAutoTopicCreation = version >= 4 ? r.bool() : true;
    return { topics, allowAutoTopicCreation };
  },
  handle(req, ctx) {
    const v = ctx.apiVersion;
    const broker = ctx.broker;
    const answers: TopicAnswer[] = [];
    if (req.topics === null) {
      for (const t of broker.topics.list())
        answers.push({ error: 0, name: t.name, partitions: t.partitions.map((p) => p.index) });
    } else {
      for (const name of req.topics) {
        const { topic, error } = broker.ensureTopic(name, req.allowAutoTopicCreation);
        answers.push({ error, name, partitions: topic ? topic.partitions.map((p) => p.index) : [] });
      }
    }
    const w = new Writer();
    if (v >= 3) w.int32(0);
    w.array([broker.node], (w, n) => {
      w.int32(n.nodeId).string(n.host).int32(n.port).nullableString(null);
    });
    if (v >= 2) w.nullableString(broker.clusterId);
    w.int32(broker.node.nodeId);
    const nodeId = broker.node.nodeId;
    w.array(answers, (w, t) => {
      w.int16(t.error).string(t.name).bool(false);
      w.array(t.partitions, (w, p) => {
        w.int16(ErrorCode.NONE).int32(p).int32(nodeId);
        w.array([nodeId], (w, id) => w.int32(id));
        w.array([nodeId], (w, id) => w.int32(id));
        if (v >= 5) w.array([] as number[], (w, id) => w.int32(id));
      });
    });
    return w;
  },
});
