import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Database } from "../../platform/db/database.js";
import { protobufContentType } from "../../platform/events/envelope.js";
import { enqueue } from "../../platform/events/outbox.js";
import { pruneInbox, pruneOutbox, startEventPruning } from "../../platform/events/pruning.js";
import { dbBackends, openTestDatabase, waitFor, sleep, type TestDatabase, silentLogger as silent } from "./helpers.js";

const HOUR = 3_600_000;
const hoursAgo = (h: number) => new Date(Date.now() - h * HOUR);

describe.each(dbBackends())("outbox and inbox pruning on $name", (backend) => {
  let database: Database<TestDatabase>;

  beforeAll(async () => {
    database = await openTestDatabase(backend);
  });
  afterAll(async () => {
    await database?.close();
  });

  /** Outbox rows of a kind, aged as asked: `sentHoursAgo` null leaves them unsent. */
  async function outboxRows(label: string, n: number, createdHoursAgo: number, sentHoursAgo: number | null) {
    const ids: string[] = [];
    await database.db.transaction().execute(async (trx) => {
      for (let i = 0; i < n; i++) {
        const e = await enqueue(trx, {
          topic: "pruning-test",
          type: "medmesh.test.happened.v1",
          source: "/medmesh/test",
          key: `${label}-${i % 3}`,
          payload: new TextEncoder().encode(label),
          contentType: protobufContentType("medmesh.test.v1.Happened"),
          time: hoursAgo(createdHoursAgo),
        });
        ids.push(e.id);
      }
      if (sentHoursAgo !== null)
        await trx
          .updateTable("outbox")
          .set({ sent_at: hoursAgo(sentHoursAgo) })
          .where("id", "in", ids)
          .execute();
    });
    return ids;
  }

  async function inboxRows(groupId: string, n: number, processedHoursAgo: number) {
    const rows = Array.from({ length: n }, (_, i) => ({
      group_id: groupId,
      event_id: `${groupId}-${processedHoursAgo}-${i}`,
      processed_at: hoursAgo(processedHoursAgo),
    }));
    await database.db.insertInto("inbox").values(rows).execute();
    return rows.map((r) => r.event_id);
  }

  const outboxIds = async () =>
    new Set((await database.db.selectFrom("outbox").select("id").execute()).map((r) => r.id));
  const inboxIds = async () =>
    new Set((await database.db.selectFrom("inbox").select("event_id").execute()).map((r) => r.event_id));

  it("deletes only published outbox rows past retention and inbox rows past retention, in batches", async () => {
    await database.db.deleteFrom("outbox").execute();
    await database.db.deleteFrom("inbox").execute();
    const oldSent = await outboxRows("old-sent", 25, 200, 199);
    const recentSent = await outboxRows("recent-sent", 5, 200, 1);
    // Old but never published (the broker was away for days): still owed to Kafka.
    const oldUnsent = await outboxRows("old-unsent", 4, 300, null);
    const oldInbox = [...(await inboxRows("g1", 23, 400)), ...(await inboxRows("g2", 3, 400))];
    const recentInbox = await inboxRows("g1", 4, 2);

    // Batches of 7: several statements each, none holding more than 7 rows' worth of work.
    expect(await pruneOutbox(database.db, hoursAgo(168), { batchSize: 7 })).toBe(25);
    expect(await pruneInbox(database.db, hoursAgo(336), { batchSize: 7 })).toBe(26);

    const outbox = await outboxIds();
    for (const id of oldSent) expect(outbox.has(id)).toBe(false);
    for (const id of [...recentSent, ...oldUnsent]) expect(outbox.has(id)).toBe(true);
    expect(outbox.size).toBe(9);
    const inbox = await inboxIds();
    for (const id of oldInbox) expect(inbox.has(id)).toBe(false);
    expect([...inbox].sort()).toEqual([...recentInbox].sort());

    // Nothing more to do the second time.
    expect(await pruneOutbox(database.db, hoursAgo(168), { batchSize: 7 })).toBe(0);
    expect(await pruneInbox(database.db, hoursAgo(336), { batchSize: 7 })).toBe(0);
  });

  it("an aborted prune stops between batches and leaves the rest for the next run", async () => {
    await database.db.deleteFrom("inbox").execute();
    await inboxRows("g3", 20, 500);
    const abort = new AbortController();
    let statements = 0;
    const counting = database.db.withPlugin({
      transformQuery: (a) => a.node,
      transformResult: async (a) => {
        if (++statements === 2) abort.abort();
        return a.result;
      },
    });
    expect(await pruneInbox(counting, hoursAgo(336), { batchSize: 5, signal: abort.signal })).toBe(10);
    expect((await inboxIds()).size).toBe(10);
  });

  it("runs on its schedule with the service's retention, and not after stop()", async () => {
    await database.db.deleteFrom("outbox").execute();
    await database.db.deleteFrom("inbox").execute();
    const oldSent = await outboxRows("sched-old", 6, 30, 25);
    const keptSent = await outboxRows("sched-kept", 2, 30, 23);
    const keptUnsent = await outboxRows("sched-unsent", 2, 30, null);
    await inboxRows("g4", 6, 49);
    const keptInbox = await inboxRows("g4", 2, 47);

    const pruning = startEventPruning({
      db: database.db,
      outboxRetentionMs: 24 * HOUR,
      inboxRetentionMs: 48 * HOUR,
      firstRunDelayMs: 10,
      intervalMs: 50,
      batchSize: 4,
      logger: silent,
    });
    try {
      await waitFor(
        "the scheduled run to prune",
        async () => (await outboxIds()).size === 4 && (await inboxIds()).size === 2,
      );
      const outbox = await outboxIds();
      for (const id of oldSent) expect(outbox.has(id)).toBe(false);
      for (const id of [...keptSent, ...keptUnsent]) expect(outbox.has(id)).toBe(true);
      expect([...(await inboxIds())].sort()).toEqual([...keptInbox].sort());
      // Later runs keep going: a row that ages past retention meanwhile goes at the next one.
      await outboxRows("sched-later", 3, 30, 26);
      await waitFor("the next run", async () => (await outboxIds()).size === 4);
    } finally {
      await pruning.stop();
    }
    await outboxRows("after-stop", 3, 30, 26);
    await sleep(300);
    expect((await outboxIds()).size).toBe(7);
  });
});
