import type { ColumnType, Generated } from "kysely";

// The row shape lives apart from the relay so the claim queries and the relay can both use it
// without importing each other.

export interface OutboxTable {
  id: string;
  /** Commit-independent insertion order; the relay publishes in this order. */
  seq: Generated<number>;
  topic: string;
  key: string;
  type: string;
  source: string;
  payload: Uint8Array;
  /** Every Kafka header of the message, fixed at enqueue time. */
  headers: ColumnType<Record<string, string>, string, string>;
  created_at: Generated<Date>;
  sent_at: Date | null;
  attempts: Generated<number>;
  last_error: string | null;
  /** Which relay claim holds the row while it is being published (see outboxClaimsMigration). */
  claim_id: string | null;
  /** Until when that claim holds; an expired claim (a relay that died) is free to take again. */
  claimed_until: Date | null;
}

/** Intersect a service's table types with this so its transactions can enqueue. */
export interface OutboxDatabase {
  outbox: OutboxTable;
}
