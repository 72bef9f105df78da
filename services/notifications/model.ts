import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { NotificationSchema, type Notification } from "../../gen/medmesh/notifications/v1/notifications_pb.js";
import { typeValue } from "./catalog.js";
import type { NotificationRow } from "./tables.js";

/** A feed row as the contract's message. */
export function toNotification(r: NotificationRow): Notification {
  return create(NotificationSchema, {
    id: r.id,
    sequence: BigInt(r.seq),
    type: typeValue(r.type),
    title: r.title,
    body: r.body,
    link: r.link,
    createTime: timestampFromDate(new Date(r.created_at)),
    readTime: r.read_at ? timestampFromDate(new Date(r.read_at)) : undefined,
    attributes: typeof r.attributes === "string" ? JSON.parse(r.attributes) : r.attributes,
  });
}
