import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { PgMultiplexer } from "../deploy/embedded/pg-multiplexer.js";
import { startEmbeddedPostgres } from "../deploy/embedded/postgres.js";
import { freePort } from "./support/embedded-mesh.js";

// The embedded Postgres is one PGlite session shared by every connection; these drive it over TCP
// with pg, as the services do, and with raw protocol messages where pg cannot misbehave on cue.

const dataDir = mkdtempSync(path.join(os.tmpdir(), "medmesh-embedded-pg-"));
let postgres: Awaited<ReturnType<typeof startEmbeddedPostgres>>;
let port: number;
const clients: pg.Client[] = [];
const pools: pg.Pool[] = [];

beforeAll(async () => {
  port = await freePort();
  postgres = await startEmbeddedPostgres({ MEDMESH_DATA_DIR: dataDir, EMBEDDED_PG_PORT: String(port) });
});

// Each test's connections go, so the next starts well under the connection limit.
afterEach(async () => {
  await Promise.all(pools.splice(0).map((p) => p.end().catch(() => undefined)));
  await Promise.all(clients.splice(0).map((c) => c.end().catch(() => undefined)));
});

afterAll(async () => {
  await postgres?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

async function client(): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: postgres.url });
  // A client whose socket a test destroys reports it here; the assertions are elsewhere.
  c.on("error", () => undefined);
  await c.connect();
  clients.push(c);
  return c;
}

function pool(max: number): pg.Pool {
  const p = new pg.Pool({ connectionString: postgres.url, max });
  p.on("error", () => undefined);
  pools.push(p);
  return p;
}

/** Settles within ms or reports it is still pending. */
async function settledWithin<T>(p: Promise<T>, ms: number): Promise<boolean> {
  let settled = false;
  void p.then(
    () => (settled = true),
    () => (settled = true),
  );
  await new Promise((r) => setTimeout(r, ms));
  return settled;
}

function destroySocket(c: pg.Client): void {
  (c as unknown as { connection: { stream: net.Socket } }).connection.stream.destroy();
}

// --- raw protocol -------------------------------------------------------------------------------

function message(type: string, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  const head = Buffer.alloc(5);
  head.write(type, 0, "latin1");
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}
const cstr = (s: string) => Buffer.from(s + "\0");
const int16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
const int32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const raw = {
  startup: () => {
    const body = Buffer.concat([
      int32(196608),
      cstr("user"),
      cstr("postgres"),
      cstr("database"),
      cstr("postgres"),
      Buffer.from([0]),
    ]);
    return Buffer.concat([int32(body.length + 4), body]);
  },
  sslRequest: () => Buffer.concat([int32(8), int32(80877103)]),
  query: (sql: string) => message("Q", cstr(sql)),
  parse: (sql: string) => message("P", cstr(""), cstr(sql), int16(0)),
  bind: (...params: string[]) =>
    message(
      "B",
      cstr(""),
      cstr(""),
      int16(0),
      int16(params.length),
      ...params.flatMap((p) => [int32(Buffer.byteLength(p)), Buffer.from(p)]),
      int16(0),
    ),
  execute: (rows = 0) => message("E", cstr(""), int32(rows)),
  flush: () => message("H"),
  sync: () => message("S"),
};

interface Reply {
  types: string;
  status: string;
  errors: string[];
  bytes: number;
}

class RawClient {
  private buffered = Buffer.alloc(0);
  private reply: Reply = { types: "", status: "", errors: [], bytes: 0 };
  private waiting: ((r: Reply) => void) | undefined;

  private constructor(readonly socket: net.Socket) {
    socket.on("error", () => undefined);
    socket.on("data", (d) => this.onData(d));
  }

  static async connect(opts: { ssl?: boolean } = {}): Promise<RawClient> {
    const socket = net.connect(port, "127.0.0.1");
    await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
    if (opts.ssl) {
      socket.write(raw.sslRequest());
      const answer = await new Promise<Buffer>((r) => socket.once("data", r));
      expect(answer.toString()).toBe("N");
    }
    const c = new RawClient(socket);
    socket.write(raw.startup());
    const ready = await c.next();
    expect(ready.types.startsWith("R")).toBe(true);
    return c;
  }

  send(...messages: Buffer[]): void {
    this.socket.write(Buffer.concat(messages));
  }

  /** Everything up to the next ReadyForQuery. */
  next(): Promise<Reply> {
    return new Promise((resolve) => {
      this.waiting = resolve;
      this.onData(Buffer.alloc(0));
    });
  }

  /** Collects until a message of this type arrives (a run ended with Flush has no ReadyForQuery). */
  async until(type: string, timeoutMs = 5_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (!this.reply.types.includes(type)) {
      if (Date.now() > deadline) throw new Error(`no ${type} in ${this.reply.types}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    return this.reply.types;
  }

  private onData(d: Buffer): void {
    this.buffered = Buffer.concat([this.buffered, d]);
    while (this.buffered.length >= 5) {
      const length = this.buffered.readInt32BE(1);
      if (this.buffered.length < length + 1) break;
      const type = String.fromCharCode(this.buffered[0]!);
      const body = this.buffered.subarray(5, length + 1);
      this.buffered = this.buffered.subarray(length + 1);
      this.reply.types += type;
      this.reply.bytes += length + 1;
      if (type === "E")
        this.reply.errors.push(
          body
            .toString("utf8")
            .split("\0")
            .find((f) => f.startsWith("M"))!
            .slice(1),
        );
      if (type === "Z" && this.waiting) {
        const reply = { ...this.reply, status: String.fromCharCode(body[0]!) };
        this.reply = { types: "", status: "", errors: [], bytes: 0 };
        const w = this.waiting;
        this.waiting = undefined;
        w(reply);
      }
    }
  }
}

// --- tests --------------------------------------------------------------------------------------

describe("the embedded Postgres multiplexer", () => {
  it("keeps each connection's parameterised queries whole while another connection loops transactions", async () => {
    const setup = await client();
    await setup.query("create table loop_rows (id int)");
    const trx = await client();
    const queries = pool(8);
    const stopAt = Date.now() + 2_000;
    let transactions = 0;
    const looping = (async () => {
      for (let i = 0; Date.now() < stopAt; i++) {
        await trx.query("begin");
        await trx.query("insert into loop_rows values ($1)", [i]);
        const own = await trx.query("select id from loop_rows where id = $1 limit 1", [i]);
        expect(own.rows).toEqual([{ id: i }]);
        await trx.query("commit");
        transactions++;
      }
    })();
    let ok = 0;
    const failures: string[] = [];
    await Promise.all(
      Array.from({ length: 8 }, async (_, worker) => {
        for (let i = 0; Date.now() < stopAt; i++) {
          const v = worker * 1_000_000 + i;
          try {
            const r = await queries.query("select $1::int as v, count(*)::int as n from loop_rows", [v]);
            if (r.rows[0]?.v === v) ok++;
            else failures.push(`asked ${v}, got ${JSON.stringify(r.rows)}`);
          } catch (err) {
            failures.push((err as Error).message);
          }
        }
      }),
    );
    await looping;
    expect(failures).toEqual([]);
    expect(ok).toBeGreaterThan(100);
    expect(transactions).toBeGreaterThan(10);
    expect((await setup.query("select count(*)::int as n from loop_rows")).rows[0].n).toBe(transactions);
  });

  it("isolates a transaction: another connection's statements wait until it commits and never see its uncommitted rows", async () => {
    const a = await client();
    const b = await client();
    await a.query("create table iso (note text)");
    await a.query("begin");
    await a.query("insert into iso values ($1)", ["uncommitted"]);
    const seenByB = b.query("select count(*)::int as n from iso where note = $1", ["uncommitted"]);
    expect(await settledWithin(seenByB, 300)).toBe(false);
    expect((await a.query("select count(*)::int as n from iso")).rows[0].n).toBe(1);
    await a.query("rollback");
    expect((await seenByB).rows[0].n).toBe(0);

    await a.query("begin");
    await a.query("insert into iso values ($1)", ["committed"]);
    const afterCommit = b.query("select count(*)::int as n from iso where note = $1", ["committed"]);
    expect(await settledWithin(afterCommit, 300)).toBe(false);
    await a.query("commit");
    expect((await afterCommit).rows[0].n).toBe(1);
  });

  it("rolls back the transaction of a client killed in the middle of it; the others carry on", async () => {
    const setup = await client();
    await setup.query("create table killed_trx (note text)");
    const victim = await client();
    await victim.query("begin");
    await victim.query("insert into killed_trx values ($1)", ["ghost"]);
    const waiting = setup.query("select count(*)::int as n from killed_trx");
    expect(await settledWithin(waiting, 200)).toBe(false);
    destroySocket(victim);
    expect((await waiting).rows[0].n).toBe(0);
    const next = await client();
    await next.query("begin");
    await next.query("insert into killed_trx values ($1)", ["kept"]);
    await next.query("commit");
    expect((await setup.query("select note from killed_trx")).rows).toEqual([{ note: "kept" }]);
  });

  it("ignores a client killed between Parse/Bind and Sync", async () => {
    const others = pool(4);
    const half = await RawClient.connect();
    // Never reaches the session: no Sync, so it is not a whole unit yet.
    half.send(raw.parse("select $1::int as v"), raw.bind("42"));
    const during = await Promise.all([1, 2, 3, 4].map((v) => others.query("select $1::int as v", [v])));
    expect(during.map((r) => r.rows[0].v)).toEqual([1, 2, 3, 4]);
    half.socket.destroy();
    const after = await Promise.all([5, 6, 7, 8].map((v) => others.query("select $1::int as v", [v])));
    expect(after.map((r) => r.rows[0].v)).toEqual([5, 6, 7, 8]);
  });

  it("abandons the run of a client killed after Execute and Flush, without committing it", async () => {
    const setup = await client();
    await setup.query("create table killed_run (id int)");
    const half = await RawClient.connect();
    half.send(raw.parse("insert into killed_run values (1) returning id"), raw.bind(), raw.execute(), raw.flush());
    // ParseComplete, BindComplete, DataRow, CommandComplete: the insert ran, its implicit transaction is open.
    expect(await half.until("C")).toBe("12DC");
    const waiting = setup.query("select count(*)::int as n from killed_run");
    expect(await settledWithin(waiting, 200)).toBe(false);
    half.socket.destroy();
    expect((await waiting).rows[0].n).toBe(0);
    expect((await setup.query("select $1::int as v", [9])).rows[0].v).toBe(9);
  });

  it("answers a client that reads a portal in pages with Execute and Flush, while others run", async () => {
    const paged = await client();
    const others = pool(4);
    // Connected before the paging starts, so their queries land between its pages.
    await Promise.all([1, 2, 3, 4].map(() => others.query("select 1")));
    let done = false;
    const answers: number[] = [];
    const busy = Promise.all(
      Array.from({ length: 4 }, async (_, w) => {
        for (let i = 0; !done; i++) {
          const v = w * 1_000_000 + i;
          const r = await others.query("select $1::int as v", [v]);
          if (r.rows[0].v !== v) throw new Error(`asked ${v}, got ${JSON.stringify(r.rows)}`);
          answers.push(v);
        }
      }),
    );
    // `rows` makes pg fetch the portal a few rows at a time, each Execute followed by Flush, not
    // Sync: the unnamed portal must survive the other connections' queries in between.
    const pages = await paged
      .query({ text: "select g from generate_series(1, $1::int) g", values: [200], rows: 2 } as pg.QueryConfig)
      .finally(() => (done = true));
    await busy;
    expect(pages.rows.map((r) => r.g)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    expect(answers.length).toBeGreaterThan(0);
  });

  it("keeps a bad query to its own connection", async () => {
    const a = await client();
    const b = await client();
    await expect(a.query("selec 1")).rejects.toThrow(/syntax error/);
    await expect(a.query("select 1 / $1::int", [0])).rejects.toThrow(/division by zero/);
    expect((await b.query("select $1::text as v", ["fine"])).rows[0].v).toBe("fine");

    await a.query("begin");
    await expect(a.query("select 1 / $1::int", [0])).rejects.toThrow(/division by zero/);
    // The failed transaction is still a's: b waits for it to end rather than joining it.
    const waiting = b.query("select $1::text as v", ["after"]);
    expect(await settledWithin(waiting, 200)).toBe(false);
    await expect(a.query("select 1")).rejects.toThrow(/current transaction is aborted/);
    await a.query("rollback");
    expect((await waiting).rows[0].v).toBe("after");
    expect((await a.query("select $1::int as v", [3])).rows[0].v).toBe(3);
  });

  it("serves 50 connections at once", async () => {
    const many = await Promise.all(Array.from({ length: 50 }, () => client()));
    await many[0]!.query("create table many (id int)");
    const results = await Promise.all(
      many.map(async (c, i) => {
        await c.query("begin");
        await c.query("insert into many values ($1)", [i]);
        const mine = await c.query("select id from many where id = $1", [i]);
        await c.query("commit");
        return mine.rows[0].id;
      }),
    );
    expect(results).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect((await many[0]!.query("select count(*)::int as n from many")).rows[0].n).toBe(50);
    await Promise.all(many.map((c) => c.end()));
  });

  it("answers SSLRequest with N and speaks plain text", async () => {
    const c = await RawClient.connect({ ssl: true });
    c.send(raw.query("select 1"));
    const reply = await c.next();
    expect(reply.types).toBe("TDCZ");
    expect(reply.status).toBe("I");
    c.socket.destroy();
  });

  it("refuses COPY FROM STDIN with an error instead of losing the session", async () => {
    const c = await client();
    await c.query("create table copied (id int)");
    await expect(c.query("copy copied from stdin")).rejects.toThrow(/COPY FROM STDIN is not supported/);
    expect((await c.query("select $1::int as v", [1])).rows[0].v).toBe(1);
  });

  it("keeps serving others while a client does not read a large result", async () => {
    const slow = await RawClient.connect();
    slow.socket.pause();
    slow.send(raw.query("select repeat('x', 1000) from generate_series(1, 20000)"));
    const others = pool(2);
    await new Promise((r) => setTimeout(r, 100));
    expect((await others.query("select $1::int as v", [7])).rows[0].v).toBe(7);
    const reply = slow.next();
    slow.socket.resume();
    const r = await reply;
    expect(r.errors).toEqual([]);
    expect(r.bytes).toBeGreaterThan(20_000_000);
    slow.socket.destroy();
  });
});

describe("the multiplexer's limits and shutdown", () => {
  it("refuses connections beyond its maximum and accepts again once one closes", async () => {
    const db = await PGlite.create();
    const mux = new PgMultiplexer({ db, host: "127.0.0.1", port: 0, maxConnections: 2 });
    await mux.start();
    const connect = async () => {
      const c = new pg.Client({ host: "127.0.0.1", port: mux.port, user: "postgres", database: "postgres" });
      c.on("error", () => undefined);
      await c.connect();
      return c;
    };
    try {
      const first = await connect();
      const second = await connect();
      await expect(connect()).rejects.toThrow(/too many clients/);
      await first.end();
      await expect.poll(() => mux.stats.connections).toBe(1);
      const third = await connect();
      expect((await third.query("select $1::int as v", [3])).rows[0].v).toBe(3);
      await Promise.all([second.end(), third.end()]);
    } finally {
      await mux.stop();
      await db.close();
    }
  });

  it("stop() closes every client, even one holding a transaction with others waiting", async () => {
    const db = await PGlite.create();
    const mux = new PgMultiplexer({ db, host: "127.0.0.1", port: 0, maxConnections: 8 });
    await mux.start();
    const connect = async () => {
      const c = new pg.Client({ host: "127.0.0.1", port: mux.port, user: "postgres", database: "postgres" });
      c.on("error", () => undefined);
      await c.connect();
      return c;
    };
    const holder = await connect();
    const waiter = await connect();
    await holder.query("begin");
    const waiting = waiter.query("select 1");
    expect(await settledWithin(waiting, 100)).toBe(false);
    await mux.stop();
    await expect(waiting).rejects.toThrow();
    expect(mux.stats.connections).toBe(0);
    // The session was left idle: the transaction did not outlive its client.
    expect(db.isInTransaction()).toBe(false);
    await db.close();
  });
});
