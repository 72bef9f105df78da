import { Writer } from "../protocol/writer.js";
import { defineApi } from "./types.js";

export const listGroupsApi = defineApi<Record<string, never>>({
  key: 16,
  name: "ListGroups",
  minVersion: 0,
  maxVersion: 2,
  decode() {
    return {};
  },
  handle(_req, ctx) {
    const listed = new Map<string, string>();
    for (const g of ctx.broker.groups.list()) listed.set(g.groupId, g.protocolType);
    // Groups that only hold committed offsets (e.g. from kcat or a stopped consumer) are listed too.
    for (const g of ctx.broker.offsets.groups()) if (!listed.has(g)) listed.set(g, "");
    const w = new Writer();
    if (ctx.apiVersion >= 1) w.int32(0);
    w.int16(0);
    w.array([...listed], (w, [id, type]) => w.string(id).string(type));
    return w;
  },
});
