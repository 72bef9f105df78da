import { sql, type Kysely, type Selectable } from "kysely";
import type { DeviceEventTable, DeviceStateTable, DeviceTable, DevicesDB } from "./tables.js";

export type DeviceRow = Selectable<DeviceTable>;
export type StateRow = Selectable<DeviceStateTable>;
export type EventRow = Selectable<DeviceEventTable>;

/** An event as the worker applies it. */
export interface ApplyEvent {
  deviceId: string;
  sequence: bigint;
  clientId: string;
  eventTime: Date;
  readings: Record<string, number>;
}

/** Where a device stands for the ingest: whether it may publish, and the newest sequence applied. */
export interface IngestView {
  revoked: boolean;
  appliedSequence: bigint;
}

/** Queries of the devices schema. */
export class DeviceStore {
  constructor(
    readonly db: Kysely<DevicesDB>,
    private readonly schema: string,
  ) {}

  private t(name: keyof DevicesDB) {
    return sql.id(this.schema, name);
  }

  async insertDevice(d: { id: string; ownerId: string; name: string; type: string; apiKeyPrefix: string }) {
    return this.db
      .insertInto("device")
      .values({ id: d.id, owner_id: d.ownerId, name: d.name, type: d.type, api_key_prefix: d.apiKeyPrefix })
      .returningAll()
      .executeTakeFirstOrThrow();
  }

  async device(id: string): Promise<DeviceRow | undefined> {
    return this.db.selectFrom("device").selectAll().where("id", "=", id).executeTakeFirst();
  }

  /** Newest first; `owner` undefined lists everyone's (admins). */
  async devices(owner: string | undefined, beforeSeq: number | undefined, limit: number): Promise<DeviceRow[]> {
    let q = this.db.selectFrom("device").selectAll();
    if (owner !== undefined) q = q.where("owner_id", "=", owner);
    if (beforeSeq !== undefined) q = q.where("seq", "<", String(beforeSeq));
    return q.orderBy("seq", "desc").limit(limit).execute();
  }

  async revokeDevice(id: string, at: Date): Promise<DeviceRow | undefined> {
    await this.db
      .updateTable("device")
      .set({ revoked_at: at })
      .where("id", "=", id)
      .where("revoked_at", "is", null)
      .execute();
    return this.device(id);
  }

  /** The device, its state and its history, at once. */
  async deleteDevice(id: string): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      await trx.deleteFrom("device_event").where("device_id", "=", id).execute();
      await trx.deleteFrom("device_state").where("device_id", "=", id).execute();
      await trx.deleteFrom("device").where("id", "=", id).execute();
    });
  }

  async ingestView(id: string): Promise<IngestView | undefined> {
    const row = await this.db
      .selectFrom("device")
      .leftJoin("device_state", "device_state.device_id", "device.id")
      .select(["device.revoked_at", "device_state.sequence"])
      .where("device.id", "=", id)
      .executeTakeFirst();
    if (!row) return undefined;
    return { revoked: row.revoked_at !== null, appliedSequence: BigInt(row.sequence ?? 0) };
  }

  /** The client id an applied event had, if it is still in the history. */
  async clientIdAt(deviceId: string, sequence: bigint): Promise<string | undefined> {
    const row = await this.db
      .selectFrom("device_event")
      .select("client_id")
      .where("device_id", "=", deviceId)
      .where("sequence", "=", String(sequence))
      .executeTakeFirst();
    return row?.client_id;
  }

  /** The owner of a device and its state (undefined state: nothing applied yet); undefined when there is no device. */
  async stateOf(id: string): Promise<{ ownerId: string; state: StateRow | undefined } | undefined> {
    const row = await this.db
      .selectFrom("device")
      .leftJoin("device_state", "device_state.device_id", "device.id")
      .select([
        "device.owner_id",
        "device_state.device_id",
        "device_state.sequence",
        "device_state.event_time",
        "device_state.readings",
        "device_state.updated_at",
      ])
      .where("device.id", "=", id)
      .executeTakeFirst();
    if (!row) return undefined;
    const state =
      row.device_id === null
        ? undefined
        : ({
            device_id: row.device_id,
            sequence: row.sequence!,
            event_time: row.event_time!,
            readings: row.readings!,
            updated_at: row.updated_at!,
          } satisfies StateRow);
    return { ownerId: row.owner_id, state };
  }

  /** History newest first by event time, from after a cursor, within [start, end). */
  async events(
    deviceId: string,
    range: { start?: Date; end?: Date },
    after: { time: Date; sequence: string } | undefined,
    limit: number,
  ): Promise<EventRow[]> {
    let q = this.db.selectFrom("device_event").selectAll().where("device_id", "=", deviceId);
    if (range.start) q = q.where("event_time", ">=", range.start);
    if (range.end) q = q.where("event_time", "<", range.end);
    if (after)
      q = q.where((eb) =>
        eb.or([
          eb("event_time", "<", after.time),
          eb.and([eb("event_time", "=", after.time), eb("sequence", "<", after.sequence)]),
        ]),
      );
    return q.orderBy("event_time", "desc").orderBy("sequence", "desc").limit(limit).execute();
  }

  /**
   * Applies a batch in one statement (so in one transaction): the history rows not already there
   * (the primary key is the inbox), then each device's state from its new events, moved only
   * forward by (sequence, event time), readings merged key by key with the newest value winning.
   * Events of devices that no longer exist are passed over. Answers the devices whose history grew.
   */
  async applyBatch(events: ApplyEvent[]): Promise<{ fresh: number; devices: string[] }> {
    if (events.length === 0) return { fresh: 0, devices: [] };
    const ids = events.map((e) => e.deviceId);
    const seqs = events.map((e) => e.sequence.toString());
    const clients = events.map((e) => e.clientId);
    const times = events.map((e) => e.eventTime.toISOString());
    const readings = events.map((e) => JSON.stringify(e.readings));
    const result = await sql<{ fresh: string; devices: string[] }>`
      with v as (
        select * from unnest(${ids}::uuid[], ${seqs}::bigint[], ${clients}::text[], ${times}::timestamptz[], ${readings}::jsonb[])
          as v(device_id, sequence, client_id, event_time, readings)
      ),
      fresh as (
        insert into ${this.t("device_event")} (device_id, sequence, client_id, event_time, readings)
        select v.device_id, v.sequence, v.client_id, v.event_time, v.readings from v
        where exists (select 1 from ${this.t("device")} d where d.id = v.device_id)
        on conflict do nothing
        returning device_id, sequence, event_time, readings
      ),
      latest_key as (
        select distinct on (f.device_id, r.key) f.device_id, r.key, r.value
        from fresh f cross join lateral jsonb_each(f.readings) r
        order by f.device_id, r.key, f.sequence desc, f.event_time desc
      ),
      merged as (select device_id, jsonb_object_agg(key, value) as readings from latest_key group by device_id),
      head as (
        select distinct on (device_id) device_id, sequence, event_time from fresh
        order by device_id, sequence desc, event_time desc
      ),
      moved as (
        insert into ${this.t("device_state")} as s (device_id, sequence, event_time, readings, updated_at)
        select h.device_id, h.sequence, h.event_time, coalesce(m.readings, '{}'::jsonb), now()
        from head h left join merged m on m.device_id = h.device_id
        on conflict (device_id) do update
          set sequence = excluded.sequence, event_time = excluded.event_time,
              readings = s.readings || excluded.readings, updated_at = excluded.updated_at
          where (s.sequence, s.event_time) < (excluded.sequence, excluded.event_time)
        returning device_id
      )
      select (select count(*) from fresh)::text as fresh,
             array(select distinct device_id::text from fresh) as devices
    `.execute(this.db);
    const row = result.rows[0]!;
    return { fresh: Number(row.fresh), devices: row.devices };
  }

  /** Deletes history applied before `before`, a batch at a time; answers how many rows went. */
  async pruneEvents(before: Date, batch = 5_000): Promise<number> {
    const res = await sql`
      delete from ${this.t("device_event")} where ctid in (
        select ctid from ${this.t("device_event")} where applied_at < ${before} limit ${batch})
    `.execute(this.db);
    return Number(res.numAffectedRows ?? 0);
  }
}
