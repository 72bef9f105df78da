import { fromBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { NotificationSchema, SubscribeResponseSchema } from "../../gen/medmesh/notifications/v1/notifications_pb.js";
import { notificationBytes, subscribeResponseBytes, toNotificationsSharing } from "./encoding.js";
import { toNotification } from "./model.js";
import type { NotificationRow } from "./tables.js";

const at = new Date("2026-12-03T12:00:00Z");
const row = (user: string, seq: number, over: Partial<NotificationRow> = {}): NotificationRow => ({
  id: `00000000-0000-4000-8000-00000000000${seq}`,
  user_id: user,
  seq,
  type: "announcement",
  title: "Maintenance",
  body: "Tonight <b>22:00</b> — ünïcode",
  link: "",
  attributes: { announcement_id: "a-1" },
  source_key: "announcement:a-1",
  created_at: at,
  read_at: null,
  ...over,
});

describe("notifications encoded once for many streams", () => {
  it("a page of one cause decodes exactly as each notification encoded on its own", () => {
    const rows = [row("u1", 1), row("u2", 7), row("u3", 3, { source_key: "event:x", title: "Other" })];
    const shared = toNotificationsSharing(rows);
    rows.forEach((r, i) => {
      const alone = toNotification(r);
      expect(fromBinary(NotificationSchema, notificationBytes(shared[i]!))).toEqual(alone);
    });
  });

  it("a SubscribeResponse from the notification's bytes carries it and the unread count", () => {
    const [n] = toNotificationsSharing([row("u1", 4), row("u2", 4)]);
    const res = fromBinary(SubscribeResponseSchema, subscribeResponseBytes(n!, 12));
    expect(res.notification).toEqual(toNotification(row("u1", 4)));
    expect(res.unreadCount).toBe(12n);
    expect(fromBinary(SubscribeResponseSchema, subscribeResponseBytes(n!, 0)).unreadCount).toBe(0n);
  });
});
