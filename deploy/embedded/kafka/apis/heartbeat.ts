import { Writer } from "../protocol/writer.js";
import { defineApi } from "./types.js";

export const heartbeatApi = defineApi<{ groupId: string; generationId: number; memberId: string }>({
  key: 12,
  name: "Heartbeat",
  minVersion: 0,
  maxVersion: 3,
  decode(r, version) {
    const groupId = r.string();
    const generationId = r.int32();
    const memberId = r.string();
    if (version >= 3) r.nullableString(); // group_instance_id
    return { groupId, generationId, memberId };
  },
  handle(req, ctx) {
    const error = ctx.broker.groups.heartbeat(req.groupId, req.generationId, req.memberId);
    const w = new Writer();
    if (ctx.apiVersion >= 1) w.int32(0);
    return w.int16(error);
  },
});
