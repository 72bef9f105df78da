import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { DocumentProcessingService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { DocumentIndexedSchema } from "../../gen/medmesh/events/v1/document_events_pb.js";
import type { ServiceToken } from "../../platform/auth/service-token.js";
import {
  eventKind,
  isEventOf,
  PoisonMessageError,
  type EventEnvelope,
  type EventPreparer,
  type OutboxEvent,
} from "../../platform/events/index.js";

/**
 * Tells documents about each DocumentIndexed this service published, so the document moves to
 * INDEXED and its watchers see it. It consumes the event rather than calling documents from the
 * indexer because the call must come after the index row is committed, and must be retried until
 * it succeeds: a consumer of the durable event gives both, with the same retries and dead-letter
 * topic as every other consumer. RecordIndexed is idempotent, so a redelivery is harmless.
 *
 * Its effect is the call alone, so the consumer records it with `outboxEffect` (the inbox row by
 * one statement, no transaction) and does not look at the inbox before calling: a repeated call
 * costs documents one read, the look would cost every report a round trip.
 */
export function indexedReporter(deps: { processing: Client<typeof DocumentProcessingService>; token: ServiceToken }): {
  handles: (event: { type: string }) => boolean;
  prepare: EventPreparer<undefined>;
  outboxEffect: () => OutboxEvent | undefined;
  checkInboxBeforePrepare: false;
} {
  const kind = eventKind(DocumentIndexedSchema);
  return {
    handles: (event) => isEventOf(event, DocumentIndexedSchema),
    async prepare(event) {
      if (event.contentType !== kind.contentType)
        throw new PoisonMessageError(`${kind.type} with content-type "${event.contentType.slice(0, 100)}"`);
      let documentId: string;
      let version: number;
      try {
        ({ documentId, version } = fromBinary(DocumentIndexedSchema, event.payload));
      } catch (err) {
        throw new PoisonMessageError(`the DocumentIndexed payload does not decode: ${(err as Error).message}`);
      }
      try {
        await deps.token.call((headers) => deps.processing.recordIndexed({ documentId, version }, { headers }));
      } catch (err) {
        // Deleted since: there is no status left to move.
        if (ConnectError.from(err).code !== Code.NotFound) throw err;
      }
      return undefined;
    },
    // The call is the whole effect; the inbox row only records that it was made.
    outboxEffect: () => undefined,
    checkInboxBeforePrepare: false,
  };
}
