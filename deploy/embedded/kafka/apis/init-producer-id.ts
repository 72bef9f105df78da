import { ErrorCode } from "../protocol/errors.js";
import { Writer } from "../protocol/writer.js";
import { defineApi } from "./types.js";

export const initProducerIdApi = defineApi<{ transactionalId: string | null; transactionTimeoutMs: number }>({
  key: 22,
  name: "InitProducerId",
  minVersion: 0,
  maxVersion: 1,
  decode(r) {
    return { transactionalId: r.nullableString(), transactionTimeoutMs: r.int32() };
  },
  handle(req, ctx) {
    const w = new Writer().int32(0);
    // Idempotence only: a transactional id would need a transaction coordinator we do not have.
    if (req.transactionalId !== null) return w.int16(ErrorCode.INVALID_REQUEST).int64(-1).int16(-1);
    return w.int16(ErrorCode.NONE).int64(ctx.broker.nextProducerId()).int16(0);
  },
});
