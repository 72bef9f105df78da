import { Writer } from "../protocol/writer.js";
import { defineApi } from "./types.js";

interface SyncGroupRequest {
  groupId: string;
  generationId: number;
  memberId: string;
  assignments: { memberId: string; assignment: Buffer }[];
}

export const syncGroupApi = defineApi<SyncGroupRequest>({
  key: 14,
  name: "SyncGroup",
  minVersion: 0,
  maxVersion: 3,
  decode(r, version) {
    const groupId = r.string();
    const generationId = r.int32();
    const memberId = r.string();
    if (version >= 3) r.nullableString(); // group_instance_id: static membership is not implemented
    const assignments = r.array((r) => ({ memberId: r.string(), assignment: Buffer.from(r.bytes()) }));
    return { groupId, generationId, memberId, assignments };
  },
  async handle(req, ctx) {
    const byMember = new Map(req.assignments.map((a) => [a.memberId, a.assignment]));
    const result = await ctx.broker.groups.sync(req.groupId, req.generationId, req.memberId, byMember);
    const w = new Writer();
    if (ctx.apiVersion >= 1) w.int32(0);
    w.int16(result.errorCode).bytes(result.assignment);
    return w;
  },
});
