import type { ColumnType, Generated } from "kysely";

// The tables of the devices schema, as migrations/ creates them.

/** Named readings, jsonb written as JSON text (pg would send an object as text anyway, but typed). */
type Readings = ColumnType<Record<string, number>, string, string>;

/** bigint columns: pg answers them as strings, they are written as numbers or strings. */
type BigIntColumn = ColumnType<string, number | string | bigint, number | string | bigint>;

export interface DeviceTable {
  id: string;
  owner_id: string;
  name: string;
  type: string;
  api_key_prefix: string;
  /** Insertion order, for paging newest first without skipping or repeating. */
  seq: Generated<string>;
  created_at: Generated<Date>;
  revoked_at: Date | null;
}

export interface DeviceStateTable {
  device_id: string;
  /** The sequence of the newest event applied; the state's version. */
  sequence: BigIntColumn;
  event_time: Date;
  readings: Readings;
  updated_at: Generated<Date>;
}

/**
 * Every applied event. Its primary key (device_id, sequence) is also the worker's inbox: the
 * CloudEvent id of a device event is "<device>/<sequence>", so recording the event and
 * remembering that it was handled are the same row.
 */
export interface DeviceEventTable {
  device_id: string;
  sequence: BigIntColumn;
  client_id: string;
  event_time: Date;
  readings: Readings;
  applied_at: Generated<Date>;
}

export interface DevicesDB {
  device: DeviceTable;
  device_state: DeviceStateTable;
  device_event: DeviceEventTable;
}
