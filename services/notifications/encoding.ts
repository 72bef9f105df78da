import { create, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { NotificationSchema, type Notification } from "../../gen/medmesh/notifications/v1/notifications_pb.js";
import { encodingOf, withEncoding } from "../../platform/grpc/encoded.js";
import { toNotification } from "./model.js";
import type { NotificationRow } from "./tables.js";

/**
 * Notifications on the wire, encoded once rather than once per stream. Every field of a protobuf
 * message may come in any order and in any number of pieces, so an announcement's page of
 * notifications, identical but for their id and number, is sent as one encoding of what they
 * share followed by a few bytes of each one's own.
 */
/** The encoding of `n`, made on first use and kept with the message (platform/grpc/encoded.ts). */
export function notificationBytes(n: Notification): Uint8Array {
  const known = encodingOf(n);
  if (known) return known;
  const bytes = toBinary(NotificationSchema, n);
  withEncoding(n, bytes);
  return bytes;
}

/** `bytes` is known to encode `n` (it was decoded from them): no need to encode it again. */
export function rememberEncoding(n: Notification, bytes: Uint8Array): void {
  withEncoding(n, bytes);
}

const SUBSCRIBE_NOTIFICATION = 1;
const SUBSCRIBE_UNREAD_COUNT = 2;

/** A SubscribeResponse carrying `n` and the unread count, from the notification's encoding. */
export function subscribeResponseBytes(n: Notification, unreadCount: number): Uint8Array {
  const w = new BinaryWriter().tag(SUBSCRIBE_NOTIFICATION, WireType.LengthDelimited).bytes(notificationBytes(n));
  if (unreadCount !== 0) w.tag(SUBSCRIBE_UNREAD_COUNT, WireType.Varint).int64(unreadCount);
  return w.finish();
}

/**
 * Rows as messages, with their encodings made ahead where rows share a cause. The rows of one
 * cause written by one statement (addPage) have the same type, title, body, link,
 * attributes and creation time; only id and number differ.
 */
export function toNotificationsSharing(rows: NotificationRow[]): Notification[] {
  let sharedKey = "";
  let shared: Uint8Array | undefined;
  return rows.map((r) => {
    const n = toNotification(r);
    if (rows.length < 2 || n.readTime) return n;
    const key = sharedKeyOf(r);
    if (key !== sharedKey) {
      sharedKey = key;
      shared = toBinary(NotificationSchema, { ...n, id: "", sequence: 0n });
    }
    const own = toBinary(NotificationSchema, create(NotificationSchema, { id: n.id, sequence: n.sequence }));
    const bytes = new Uint8Array(shared!.length + own.length);
    bytes.set(shared!, 0);
    bytes.set(own, shared!.length);
    withEncoding(n, bytes);
    return n;
  });
}

/** What makes two rows share an encoding but for id and number (the cause fixes the attributes). */
function sharedKeyOf(r: NotificationRow): string {
  return `${r.source_key}\u0000${r.type}\u0000${r.title}\u0000${r.body}\u0000${r.link}\u0000${new Date(r.created_at).getTime()}`;
}
