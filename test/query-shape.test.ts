import { randomBytes } from "node:crypto";
import { sql, type Kysely } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDatabase, type Database } from "../platform/db/database.js";
import { queryShape } from "../platform/db/query-shape.js";

interface DB {
  note: { id: string; owner: string; body: string; deleted: boolean };
}

const backends: Array<{ name: string; url?: string }> = [{ name: "pglite" }];
if (process.env.DATABASE_URL) backends.push({ name: "postgres", url: process.env.DATABASE_URL });

describe.each(backends)("queryShape on $name", (backend) => {
  let database: Database<DB>;
  const schema = `shape_t${randomBytes(4).toString("hex")}`;

  beforeAll(async () => {
    database = await openDatabase<DB>({ url: backend.url, dataDir: "memory://", schema, poolMax: 4 });
    await database.db.schema
      .createTable("note")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("owner", "text", (c) => c.notNull())
      .addColumn("body", "text", (c) => c.notNull())
      .addColumn("deleted", "boolean", (c) => c.notNull().defaultTo(false))
      .execute();
    await database.db
      .insertInto("note")
      .values([
        { id: "a", owner: "alice", body: "alice's note", deleted: false },
        { id: "b", owner: "bob", body: "bob's note", deleted: false },
        { id: "gone", owner: "alice", body: "deleted note", deleted: true },
      ])
      .execute();
  });

  afterAll(async () => {
    if (backend.url) await sql`drop schema if exists ${sql.id(schema)} cascade`.execute(database.db);
    await database?.close();
  });

  const byIdAndOwner = () =>
    queryShape(
      () => database.db,
      2,
      (db: Kysely<DB>, id: string, owner: string) =>
        db
          .selectFrom("note")
          .select(["id", "owner", "body"])
          .where("id", "=", id)
          .where("owner", "=", owner)
          .where("deleted", "=", false),
    );

  it("binds each call's own arguments, in the right positions, many calls at once", async () => {
    const shape = byIdAndOwner();
    const asks = Array.from({ length: 200 }, (_, i) =>
      i % 2 ? { id: "a", owner: "alice", want: "alice's note" } : { id: "b", owner: "bob", want: "bob's note" },
    );
    const got = await Promise.all(asks.map((a) => shape.first(database.db, a.id, a.owner)));
    expect(got.map((r) => r?.body)).toEqual(asks.map((a) => a.want));
    // Arguments swapped between positions find nothing rather than someone else's row.
    expect(await shape.first(database.db, "alice", "a")).toBeUndefined();
    // Another owner's id under one's own name is not found.
    expect(await shape.first(database.db, "b", "alice")).toBeUndefined();
  });

  it("keeps the values the shape fixed", async () => {
    const shape = byIdAndOwner();
    expect(await shape.first(database.db, "gone", "alice")).toBeUndefined();
  });

  it("runs inside a transaction and sees its uncommitted writes", async () => {
    const shape = byIdAndOwner();
    await database.db
      .transaction()
      .execute(async (trx) => {
        await trx.insertInto("note").values({ id: "t", owner: "carol", body: "in flight", deleted: false }).execute();
        expect((await shape.first(trx, "t", "carol"))?.body).toBe("in flight");
        throw new Error("roll back");
      })
      .catch(() => undefined);
    expect(await shape.first(database.db, "t", "carol")).toBeUndefined();
  });

  it("writes with bound values too", async () => {
    const rename = queryShape(
      () => database.db,
      2,
      (db: Kysely<DB>, id: string, body: string) =>
        db.updateTable("note").set({ body }).where("id", "=", id).returning(["id", "body"]),
    );
    expect(await rename.first(database.db, "b", "bob's edited note")).toEqual({ id: "b", body: "bob's edited note" });
    expect(await rename.first(database.db, "nobody", "x")).toBeUndefined();
    expect((await byIdAndOwner().first(database.db, "a", "alice"))?.body).toBe("alice's note");
  });

  it("refuses a shape that writes an argument into the statement's text", async () => {
    const inlined = queryShape(
      () => database.db,
      1,
      (db: Kysely<DB>, id: string) =>
        db
          .selectFrom("note")
          .select("id")
          .where(sql.raw<boolean>(`id = '${String(id)}'`)),
    );
    await expect(inlined.first(database.db, "a")).rejects.toThrow(/argument 0 did not become a bound parameter/);
  });
});
