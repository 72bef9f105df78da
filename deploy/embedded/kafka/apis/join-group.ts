import { Writer } from "../protocol/writer.js";
import type { JoinRequest } from "../groups/coordinator.js";
import { defineApi } from "./types.js";

type Decoded = Omit<JoinRequest, "clientId" | "clientHost" | "requireKnownMemberId">;

export const joinGroupApi = defineApi<Decoded>({
  key: 11,
  name: "JoinGroup",
  minVersion: 0,
  maxVersion: 5,
  decode(r, version) {
    const groupId = r.string();
    const sessionTimeoutMs = r.int32();
    // v0 has no rebalance timeout: Kafka used the session timeout for both.
    const rebalanceTimeoutMs = version >= 1 ? r.int32() : sessionTimeoutMs;
    const memberId = r.string();
    const groupInstanceId = version >= 5 ? r.nullableString() : null;
    const protocolType = r.string();
    const protocols = r.array((r) => ({ name: r.string(), metadata: Buffer.from(r.bytes()) }));
    return { groupId, sessionTimeoutMs, rebalanceTimeoutMs, memberId, groupInstanceId, protocolType, protocols };
  },
  async handle(req, ctx) {
    const v = ctx.apiVersion;
    const result = await ctx.broker.groups.join({
      ...req,
      clientId: ctx.clientId,
      clientHost: ctx.clientHost,
      requireKnownMemberId: v >= 4,
    });
    const w = new Writer();
    if (v >= 2) w.int32(0);
    w.int16(result.errorCode)
      .int32(result.generationId)
      .string(result.protocolName)
      .string(result.leaderId)
      .string(result.memberId);
    w.array(result.members, (w, m) => {
      w.string(m.memberId);
      if (v >= 5) w.nullableString(m.groupInstanceId);
      w.bytes(m.metadata);
    });
    return w;
  },
});
