import { ErrorCode } from "../protocol/errors.js";
import { Writer } from "../protocol/writer.js";
import { defineApi } from "./types.js";

export const findCoordinatorApi = defineApi<{ key: string; keyType: number }>({
  key: 10,
  name: "FindCoordinator",
  minVersion: 0,
  maxVersion: 2,
  decode(r, version) {
    const key = r.string();
    const keyType = version >= 1 ? r.int8() : 0;
    return { key, keyType };
  },
  handle(req, ctx) {
    const v = ctx.apiVersion;
    const node = ctx.broker.node;
    // Transactions are not implemented: fail fast instead of letting the client retry until timeout.
    const unsupported = req.keyType !== 0;
    const w = new Writer();
    if (v >= 1) w.int32(0);
    w.int16(unsupported ? ErrorCode.INVALID_REQUEST : ErrorCode.NONE);
    if (v >= 1) w.nullableString(unsupported ? "the embedded broker does not support transactions" : null);
    w.int32(unsupported ? -1 : node.nodeId)
      .string(unsupported ? "" : node.host)
      .int32(unsupported ? -1 : node.port);
    return w;
  },
});
