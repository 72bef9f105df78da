import type { Reader } from "../protocol/reader.js";
import type { Writer } from "../protocol/writer.js";
import type { Broker } from "../broker.js";

export interface RequestContext {
  readonly broker: Broker;
  readonly apiVersion: number;
  readonly clientId: string;
  readonly clientHost: string;
  /** Aborted when the client's connection closes, so long-polls stop early. */
  readonly signal: AbortSignal;
}

/**
 * One Kafka API. decode() is synchronous and runs before handle(), so a malformed body is rejected
 * before anything changes state. handle() returns the encoded response body, or null for "no
 * response" (Produce with acks=0).
 */
export interface ApiHandler<Req> {
  readonly key: number;
  readonly name: string;
  readonly minVersion: number;
  readonly maxVersion: number;
  /** First version using flexible (tagged-field) encodings and request header v2. */
  readonly firstFlexibleVersion?: number;
  decode(r: Reader, version: number): Req;
  handle(req: Req, ctx: RequestContext): Promise<Writer | null> | Writer | null;
}

export function defineApi<Req>(api: ApiHandler<Req>): ApiHandler<Req> {
  return api;
}
