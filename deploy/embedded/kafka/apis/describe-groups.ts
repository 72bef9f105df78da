import { ErrorCode } from "../protocol/errors.js";
import { Writer } from "../protocol/writer.js";
import { defineApi } from "./types.js";

export const describeGroupsApi = defineApi<{ groups: string[] }>({
  key: 15,
  name: "DescribeGroups",
  minVersion: 0,
  maxVersion: 2,
  decode(r) {
    return { groups: r.array((r) => r.string()) };
  },
  handle(req, ctx) {
    const w = new Writer();
    if (ctx.apiVersion >= 1) w.int32(0);
    w.array(req.groups, (w, groupId) => {
      const g = ctx.broker.groups.describe(groupId);
      // A group that only holds committed offsets exists for Kafka, in the Empty state.
      if (g.state === "Dead" && ctx.broker.offsets.all(groupId).length > 0) g.state = "Empty";
      w.int16(groupId === "" ? ErrorCode.INVALID_GROUP_ID : ErrorCode.NONE)
        .string(groupId)
        .string(g.state)
        .string(g.protocolType)
        .string(g.protocolName);
      w.array(g.members, (w, m) => {
        w.string(m.memberId).string(m.clientId).string(m.clientHost).bytes(m.metadata).bytes(m.assignment);
      });
    });
    return w;
  },
});
