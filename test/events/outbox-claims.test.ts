import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Database } from "../../platform/db/database.js";
import { protobufContentType } from "../../platform/events/envelope.js";
import { claimBatch, markSent, releaseClaim, type Claim } from "../../platform/events/outbox-claims.js";
import { enqueue } from "../../platform/events/outbox.js";
import { dbBackends, openTestDatabase, sleep, type TestDatabase } from "./helpers.js";

describe.each(dbBackends())("outbox claims on $name", (backend) => {
  let database: Database<TestDatabase>;
  beforeAll(async () => {
    database = await openTestDatabase(backend);
  });
  afterAll(async () => {
    await database?.close();
  });

  /** Enqueues one event per label, in order; the key is the label's letter. */
  async function enqueueAll(labels: string[]): Promise<void> {
    await database.db.transaction().execute(async (trx) => {
      for (const label of labels)
        await enqueue(trx, {
          topic: "claims-test",
          type: "medmesh.test.happened.v1",
          source: "/medmesh/test",
          key: label[0]!,
          payload: new TextEncoder().encode(label),
          contentType: protobufContentType("medmesh.test.v1.Happened"),
        });
    });
  }
  const labels = (c: Claim) => c.rows.map((r) => Buffer.from(r.payload).toString());

  it("never lets a second claim take a key whose earlier row another claim holds or gave back", async () => {
    await database.db.deleteFrom("outbox").execute();
    await enqueueAll(["a1", "b1", "a2", "c1", "b2", "d1", "c2"]);
    const lease = 60_000;

    const first = await claimBatch(database.db, 2, lease);
    expect(labels(first)).toEqual(["a1", "b1"]);
    // a2 and b2 wait behind rows the first claim holds; c and d are free.
    const second = await claimBatch(database.db, 10, lease);
    expect(labels(second)).toEqual(["c1", "d1", "c2"]);
    expect(labels(await claimBatch(database.db, 10, lease))).toEqual([]);

    // The first publish failed: its rows go back, and only they (with what follows them) can be taken.
    await releaseClaim(database.db, first, new Error("broker away"));
    const failed = await database.db
      .selectFrom("outbox")
      .select(["attempts", "last_error"])
      .where(
        "id",
        "in",
        first.rows.map((r) => r.id),
      )
      .execute();
    expect(failed).toEqual([
      { attempts: 1, last_error: "broker away" },
      { attempts: 1, last_error: "broker away" },
    ]);
    const retry = await claimBatch(database.db, 10, lease);
    expect(labels(retry)).toEqual(["a1", "b1", "a2", "b2"]);

    await markSent(database.db, second);
    await markSent(database.db, retry);
    const unsent = await database.db.selectFrom("outbox").select("id").where("sent_at", "is", null).execute();
    expect(unsent).toEqual([]);
    const rows = await database.db.selectFrom("outbox").select(["claim_id", "claimed_until"]).execute();
    for (const r of rows) expect(r).toEqual({ claim_id: null, claimed_until: null });
  });

  it("takes rows back from a claim whose lease ran out (its relay died), and ignores that relay's late release", async () => {
    await database.db.deleteFrom("outbox").execute();
    await enqueueAll(["e1", "e2", "f1"]);
    const dead = await claimBatch(database.db, 10, 1);
    expect(labels(dead)).toEqual(["e1", "e2", "f1"]);
    await sleep(20);
    const next = await claimBatch(database.db, 10, 60_000);
    expect(labels(next)).toEqual(["e1", "e2", "f1"]);
    await releaseClaim(database.db, dead, new Error("late"));
    expect(labels(await claimBatch(database.db, 10, 60_000))).toEqual([]);
    await markSent(database.db, next);
  });
});
