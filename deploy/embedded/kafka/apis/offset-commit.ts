import { ErrorCode } from "../protocol/errors.js";
import { Writer } from "../protocol/writer.js";
import { defineApi } from "./types.js";

interface OffsetCommitRequest {
  groupId: string;
  generationId: number;
  memberId: string;
  topics: { name: string; partitions: { index: number; offset: number; metadata: string | null }[] }[];
}

/** Kafka's offset.metadata.max.bytes default. */
const MAX_METADATA_BYTES = 4096;

export const offsetCommitApi = defineApi<OffsetCommitRequest>({
  key: 8,
  name: "OffsetCommit",
  // v0 and v1 are here because librdkafka 2.0 only enables consumer groups when it sees them.
  minVersion: 0,
  maxVersion: 5,
  decode(r, version) {
    const groupId = r.string();
    const generationId = version >= 1 ? r.int32() : -1;
    const memberId = version >= 1 ? r.string() : "";
    if (version >= 2 && version <= 4) r.int64(); // retention_time_ms: offsets are kept until the topic goes
    const topics = r.array((r) => ({
      name: r.string(),
      partitions: r.array((r) => {
        const index = r.int32();
        const offset = r.int64();
        if (version === 1) r.int64(); // commit_timestamp
        const metadata = r.nullableString();
        return { index, offset, metadata };
      }),
    }));
    return { groupId, generationId, memberId, topics };
  },
  async handle(req, ctx) {
    const broker = ctx.broker;
    const groupError =
      req.groupId === ""
        ? ErrorCode.INVALID_GROUP_ID
        : broker.groups.validateCommit(req.groupId, req.generationId, req.memberId);
    const accepted: { topic: string; partition: number; offset: number; metadata: string }[] = [];
    const answers = req.topics.map((t) => ({
      name: t.name,
      partitions: t.partitions.map((p) => {
        let error: number = groupError;
        if (error === 0 && !broker.topics.partition(t.name, p.index)) error = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION;
        if (error === 0 && p.metadata !== null && Buffer.byteLength(p.metadata) > MAX_METADATA_BYTES)
          error = ErrorCode.OFFSET_METADATA_TOO_LARGE;
        if (error === 0)
          accepted.push({ topic: t.name, partition: p.index, offset: p.offset, metadata: p.metadata ?? "" });
        return { index: p.index, error };
      }),
    }));
    if (accepted.length > 0) {
      broker.offsets.commit(req.groupId, accepted);
      try {
        await broker.offsets.whenDurable();
      } catch (err) {
        broker.logger.error("offset fsync failed", { error: String(err) });
        for (const t of answers)
          for (const p of t.partitions) if (p.error === 0) p.error = ErrorCode.UNKNOWN_SERVER_ERROR;
      }
    }
    const w = new Writer();
    if (ctx.apiVersion >= 3) w.int32(0);
    w.array(answers, (w, t) => {
      w.string(t.name);
      w.array(t.partitions, (w, p) => w.int32(p.index).int16(p.error));
    });
    return w;
  },
});
