import { ErrorCode } from "../protocol/errors.js";
import { Writer } from "../protocol/writer.js";
import { defineApi } from "./types.js";

interface LeaveGroupRequest {
  groupId: string;
  members: { memberId: string; groupInstanceId: string | null }[];
}

export const leaveGroupApi = defineApi<LeaveGroupRequest>({
  key: 13,
  name: "LeaveGroup",
  minVersion: 0,
  maxVersion: 3,
  decode(r, version) {
    const groupId = r.string();
    if (version >= 3) {
      const members = r.array((r) => ({ memberId: r.string(), groupInstanceId: r.nullableString() }));
      return { groupId, members };
    }
    return { groupId, members: [{ memberId: r.string(), groupInstanceId: null }] };
  },
  handle(req, ctx) {
    const v = ctx.apiVersion;
    const errors = ctx.broker.groups.leave(
      req.groupId,
      req.members.map((m) => m.memberId),
    );
    const w = new Writer();
    if (v >= 1) w.int32(0);
    if (v >= 3) {
      // The top-level error is for the request as a whole; per-member problems go in the list.
      w.int16(ErrorCode.NONE);
      w.array(req.members, (w, m) => {
        const i = req.members.indexOf(m);
        w.string(m.memberId)
          .nullableString(m.groupInstanceId)
          .int16(errors[i] ?? ErrorCode.NONE);
      });
    } else {
      w.int16(errors[0] ?? ErrorCode.NONE);
    }
    return w;
  },
});
