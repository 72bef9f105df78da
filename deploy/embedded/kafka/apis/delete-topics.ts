import { ErrorCode } from "../protocol/errors.js";
import { Writer } from "../protocol/writer.js";
import { defineApi } from "./types.js";

export const deleteTopicsApi = defineApi<{ names: string[]; timeoutMs: number }>({
  key: 20,
  name: "DeleteTopics",
  minVersion: 0,
  maxVersion: 1,
  decode(r) {
    const names = r.array((r) => r.string());
    const timeoutMs = r.int32();
    return { names, timeoutMs };
  },
  handle(req, ctx) {
    const broker = ctx.broker;
    const results = req.names.map((name) => {
      if (!broker.topics.delete(name)) return { name, error: ErrorCode.UNKNOWN_TOPIC_OR_PARTITION };
      broker.offsets.deleteTopic(name);
      return { name, error: ErrorCode.NONE };
    });
    const w = new Writer();
    if (ctx.apiVersion >= 1) w.int32(0);
    w.array(results, (w, r) => w.string(r.name).int16(r.error));
    return w;
  },
});
