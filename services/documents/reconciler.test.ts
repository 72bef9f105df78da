import { randomBytes, randomUUID } from "node:crypto";
import { fromBinary } from "@bufbuild/protobuf";
import { sql, type Kysely } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DocumentUploadedSchema } from "../../gen/medmesh/events/v1/document_events_pb.js";
import { openDatabase, type Database } from "../../platform/db/database.js";
import { migrateToLatest } from "../../platform/db/migrate.js";
import type { OutboxDatabase } from "../../platform/events/index.js";
import { dbBackends } from "../../test/events/helpers.js";
import { migrations } from "./migrations/index.js";
import { OutcomeStore } from "./outcome-store.js";
import { neverFinishedMessage, processingReconciler } from "./reconciler.js";
import { StatusFeed } from "./status-feed.js";
import { StatusWriter } from "./status-writer.js";
import { DocumentStore } from "./store.js";
import type { DocumentsDB } from "./tables.js";

type DB = DocumentsDB & OutboxDatabase;
/** The store's view of the same schema (the outbox is the events kit's table). */
const documentsView = (db: Kysely<DB>) => db as unknown as Kysely<DocumentsDB>;
const silent = { debug() {}, info() {}, warn() {}, error() {}, child: () => silent };

/**
 * The reconciler against the documents schema itself, on PGlite and (with DATABASE_URL) Postgres.
 * Time is moved by backdating rows rather than by waiting: a version counts as stuck once its
 * last sign of life is an hour old, against a ten-minute threshold.
 */
describe.each(dbBackends())("the processing reconciler on $name", (backend) => {
  let database: Database<DB>;
  let store: DocumentStore;
  let outcomes: OutcomeStore;
  let status: StatusWriter;
  const schema = `documents_r${randomBytes(4).toString("hex")}`;

  beforeAll(async () => {
    database = await openDatabase<DB>({ url: backend.url, dataDir: "memory://", schema, poolMax: 5 });
    await migrateToLatest(database.db as Kysely<unknown>, schema, migrations);
    const db = documentsView(database.db);
    status = new StatusWriter(db, new StatusFeed(db, 60_000));
    store = new DocumentStore(db, status);
    outcomes = new OutcomeStore(db, status);
  });

  afterAll(async () => {
    if (database?.kind === "postgres")
      await sql`drop schema if exists ${sql.id(schema)} cascade`.execute(database.db).catch(() => undefined);
    await database?.close();
  });

  const reconciler = (maxRedrives = 3) =>
    processingReconciler({ status, stuckAfterMs: 10 * 60_000, maxRedrives, logger: silent });

  async function uploaded(): Promise<string> {
    const id = randomUUID();
    await store.addVersion(
      {
        create: {
          id,
          title: "Stuck",
          authors: [],
          journal: null,
          publication_date: null,
          doi: null,
          pmid: null,
          document_type: "research_paper",
          specialty: null,
          uploaded_by: "doctor",
          visibility: "private",
          metadata: {},
        },
      },
      {
        sha256: randomBytes(32).toString("hex"),
        size_bytes: 10,
        mime_type: "text/plain",
        needs_ocr: false,
        filename: "a.txt",
        uploaded_by: "doctor",
      },
    );
    return id;
  }

  /** The relay "published" the upload event, and then it was lost on the way. */
  const loseEvents = (id: string) =>
    database.db
      .updateTable("outbox")
      .set({ sent_at: sql<Date>`now()` })
      .where("key", "=", id)
      .execute();

  /** Every sign of life of the version is an hour old. */
  const age = (id: string) =>
    database.db
      .updateTable("document_version")
      .set({
        created_at: sql<Date>`now() - interval '1 hour'`,
        started_at: sql<Date | null>`started_at - interval '1 hour'`,
        redriven_at: sql<Date | null>`redriven_at - interval '1 hour'`,
      })
      .where("document_id", "=", id)
      .execute();

  const eventsOf = (id: string) =>
    database.db.selectFrom("outbox").selectAll().where("key", "=", id).orderBy("seq").execute();

  const documentOf = (id: string) =>
    database.db.selectFrom("document").select(["processing_status"]).where("id", "=", id).executeTakeFirstOrThrow();

  it("re-drives a version whose event was lost, once past the threshold, with a fresh event of the same version", async () => {
    const id = await uploaded();
    const r = reconciler();
    // The event is still owed to Kafka: nothing to re-drive, however old.
    await age(id);
    await r.reconcile();
    expect(await eventsOf(id)).toHaveLength(1);

    await loseEvents(id);
    await database.db
      .updateTable("document_version")
      .set({ created_at: sql<Date>`now()` })
      .where("document_id", "=", id)
      .execute();
    await r.reconcile();
    expect(await eventsOf(id), "not stuck yet").toHaveLength(1);

    await age(id);
    await r.reconcile();
    const events = await eventsOf(id);
    expect(events).toHaveLength(2);
    const [original, redrive] = events;
    expect(redrive!.id).not.toBe(original!.id);
    expect(redrive!.type).toBe(original!.type);
    expect(redrive!.sent_at).toBeNull();
    const a = fromBinary(DocumentUploadedSchema, original!.payload);
    const b = fromBinary(DocumentUploadedSchema, redrive!.payload);
    // The same version; only its upload time differs, since the test moved the version's clock back.
    expect({ ...b, uploadTime: undefined }).toEqual({ ...a, uploadTime: undefined });
    expect((await documentOf(id)).processing_status).toBe("uploaded");
  });

  it("two replicas reconciling at once re-drive a stuck version once", async () => {
    const ids = await Promise.all([uploaded(), uploaded(), uploaded()]);
    for (const id of ids) (await loseEvents(id), await age(id));
    const runs = await Promise.all([reconciler().reconcile(), reconciler().reconcile()]);
    expect(runs[0]!.redriven + runs[1]!.redriven).toBe(3);
    // And again right after: the claim moved each version's clock, so nobody sends it a third time.
    const again = await Promise.all([reconciler().reconcile(), reconciler().reconcile()]);
    expect(again[0]!.redriven + again[1]!.redriven).toBe(0);
    for (const id of ids) expect(await eventsOf(id)).toHaveLength(2);
  });

  it("leaves versions that have an outcome, and deleted documents, alone", async () => {
    const done = await uploaded();
    const gone = await uploaded();
    await outcomes.record(done, 1, { status: "failed", reason: "corrupt", message: "damaged" });
    await database.db
      .updateTable("document")
      .set({ deleted_at: sql<Date>`now()` })
      .where("id", "=", gone)
      .execute();
    for (const id of [done, gone]) (await loseEvents(id), await age(id));
    await reconciler().reconcile();
    expect(await eventsOf(done)).toHaveLength(1);
    expect(await eventsOf(gone)).toHaveLength(1);
  });

  it("a re-drive nobody takes up does not count; one a worker starts on and never finishes does, and the limit marks the version FAILED", async () => {
    const idle = await uploaded();
    const crashing = await uploaded();
    const r = reconciler(2);
    for (const id of [idle, crashing]) await loseEvents(id);
    for (let round = 1; round <= 4; round++) {
      for (const id of [idle, crashing]) await age(id);
      await r.reconcile();
      // Each re-drive reaches Kafka and, for the idle one, no worker.
      await loseEvents(idle);
      // A worker picks up the crashing one's re-drive (StartProcessing), then dies before an outcome.
      if ((await documentOf(crashing)).processing_status !== "failed") {
        expect((await outcomes.start(crashing, 1)).kind).toBe("proceed");
        await loseEvents(crashing);
      }
    }
    // idle: four re-drives, none taken up (a processing outage): still waiting, not failed.
    expect((await documentOf(idle)).processing_status).toBe("uploaded");
    expect(await eventsOf(idle)).toHaveLength(5);
    // crashing: re-driven twice and started after each, so the third look gives up on it.
    expect((await documentOf(crashing)).processing_status).toBe("failed");
    expect(await eventsOf(crashing)).toHaveLength(3);
    const outcome = await outcomes.outcome(crashing, 1);
    expect(outcome).toMatchObject({
      status: "failed",
      failure_reason: "processing_error",
      failure_message: neverFinishedMessage(2),
    });
    const history = await database.db
      .selectFrom("document_status")
      .select(["status", "failure_reason"])
      .where("document_id", "=", crashing)
      .orderBy("seq")
      .execute();
    expect(history.at(-1)).toEqual({ status: "failed", failure_reason: "processing_error" });
    // A re-driven version that finished meanwhile is only answered with its outcome.
    expect((await outcomes.start(crashing, 1)).kind).toBe("done");
  });
});
