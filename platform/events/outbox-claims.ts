import { randomUUID } from "node:crypto";
import { sql, type Kysely } from "kysely";
import { queryShape, type QueryShape } from "../db/query-shape.js";
import type { OutboxDatabase } from "./outbox-table.js";

/** An outbox row a relay holds the claim on: it alone publishes it until it marks or releases it. */
export interface ClaimedRow {
  id: string;
  topic: string;
  key: string;
  payload: Uint8Array;
  headers: Record<string, string> | string;
  created_at: Date;
}

export interface Claim {
  id: string;
  /** In seq order. */
  rows: ClaimedRow[];
}

/**
 * Claims up to `limit` unsent rows in one statement and returns them; the caller publishes them
 * after it committed, so no transaction (and on PGlite, no session) is held while Kafka is slow or
 * away. The claim is a lease (`claimed_until`): a relay that dies mid-publish only delays
 * its rows by `leaseMs`, after which any relay takes them again.
 *
 * Several relays may claim at once. `skip locked` lets a second relay step over rows the first is
 * claiming at this very moment instead of waiting for it. What keeps per-key order is the
 * `claimable` step: a row is only claimed if no earlier unsent row of its key stays outside this claim
 * (leased by another relay, being claimed right now, or released after a failed publish and not
 * reached yet). So two relays never publish the same key at the same time, and a later event of a
 * key can never be published before an earlier one, even when the earlier one's publish failed.
 */
export async function claimBatch(service: Kysely<any>, limit: number, leaseMs: number): Promise<Claim> {
  const id = randomUUID();
  const rows = await statementsOf(service).claim.execute(service, limit, leaseMs, id);
  // bigserial comes back as a string from pg; the order is what matters, not the type.
  const claimed = [...rows.rows].sort((a, b) => Number(a.seq) - Number(b.seq));
  return { id, rows: claimed.map(({ seq: _seq, ...row }) => row) };
}

interface ClaimStatements {
  claim: QueryShape<[number, number, string], ClaimedRow & { seq: string | number }>;
  markSent: QueryShape<[Date, string[]], unknown>;
}

/** The relay's statements, built and compiled once per database: a busy relay runs them for every batch. */
const compiled = new WeakMap<Kysely<any>, ClaimStatements>();

function statementsOf(service: Kysely<any>): ClaimStatements {
  let s = compiled.get(service);
  if (!s) compiled.set(service, (s = { claim: claimShape(service), markSent: markSentShape(service) }));
  return s;
}

function claimShape(service: Kysely<any>) {
  // One statement, so one round trip and no explicit transaction: the candidates are locked by it
  // and the claim is written by it, which is all the transaction this used to open was for.
  return queryShape(
    () => service,
    3,
    (db: Kysely<OutboxDatabase>, limit: number, leaseMs: number, id: string) =>
      db
        .with("candidate", (q) =>
          q
            .selectFrom("outbox")
            .select(["id", "seq", "topic", "key"])
            .where("sent_at", "is", null)
            .where((eb) => eb.or([eb("claimed_until", "is", null), eb("claimed_until", "<", sql<Date>`now()`)]))
            .orderBy("seq")
            .limit(limit)
            .forUpdate()
            .skipLocked(),
        )
        .with("claimable", (q) =>
          q
            .selectFrom("candidate as c")
            .select("c.id")
            .where(({ not, exists, selectFrom }) =>
              not(
                exists(
                  selectFrom("outbox as e")
                    .select("e.id")
                    .whereRef("e.topic", "=", "c.topic")
                    .whereRef("e.key", "=", "c.key")
                    .whereRef("e.seq", "<", "c.seq")
                    .where("e.sent_at", "is", null)
                    .where("e.id", "not in", selectFrom("candidate").select("candidate.id")),
                ),
              ),
            ),
        )
        .updateTable("outbox")
        .set({ claim_id: id, claimed_until: sql<Date>`now() + ${leaseMs} * interval '1 millisecond'` })
        .where("id", "in", (q) => q.selectFrom("claimable").select("claimable.id"))
        .returning(["id", "seq", "topic", "key", "payload", "headers", "created_at"]),
  );
}

function markSentShape(service: Kysely<any>) {
  // The ids as one array parameter, so one statement text serves every batch size.
  return queryShape(
    () => service,
    2,
    (db: Kysely<OutboxDatabase>, at: Date, ids: string[]) =>
      db
        .updateTable("outbox")
        .set((eb) => ({
          sent_at: at,
          attempts: eb("attempts", "+", 1),
          last_error: null,
          claim_id: null,
          claimed_until: null,
        }))
        .where("id", "=", sql<string>`any(cast(${ids} as uuid[]))`),
  );
}

/** Marks a claim's rows sent. Kafka acknowledged them, so this holds even if the lease ran out meanwhile. */
export async function markSent(service: Kysely<any>, claim: Claim): Promise<void> {
  await statementsOf(service).markSent.execute(
    service,
    new Date(),
    claim.rows.map((r) => r.id),
  );
}

/**
 * Records a failed publish on the rows and gives them back at once, so the next attempt (this
 * relay's, after its backoff, or another's) starts from the same head of each key. Only rows still
 * under this claim are touched: if the lease ran out and another relay took them, they are its now.
 */
export async function releaseClaim(service: Kysely<any>, claim: Claim, error: Error): Promise<void> {
  await (service as Kysely<OutboxDatabase>)
    .updateTable("outbox")
    .set((eb) => ({
      attempts: eb("attempts", "+", 1),
      last_error: error.message.slice(0, 1000),
      claim_id: null,
      claimed_until: null,
    }))
    .where("claim_id", "=", claim.id)
    .where("sent_at", "is", null)
    .execute();
}
