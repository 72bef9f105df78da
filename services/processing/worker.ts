import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import {
  DocumentProcessingService,
  DocumentService,
  type ProcessingOutcome,
  type RecordProcessingResultRequest,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import { DocumentUploadedSchema, type DocumentUploaded } from "../../gen/medmesh/events/v1/document_events_pb.js";
import type { ServiceToken } from "../../platform/auth/service-token.js";
import {
  classifyFailure,
  eventKind,
  isEventOf,
  PoisonMessageError,
  type DeliveryInfo,
  type EventEnvelope,
  type EventPreparer,
  type InboxDatabase,
  type OutboxDatabase,
  type OutboxEvent,
} from "../../platform/events/index.js";
import { logger as rootLogger, type Logger } from "../../platform/telemetry/logger.js";
import type { AnalysisPool } from "./analysis.js";
import { outcomeEvent, processingErrorFailure, toProcessingFailure, toProcessingResult } from "./result.js";

export type ProcessingDB = InboxDatabase & OutboxDatabase;

/** Test seams; only code can pass them. */
export interface ProcessingHooks {
  /** Called just before a version is read and analysed; throwing fails the attempt. */
  beforeAnalysis?: (documentId: string, version: number, delivery: DeliveryInfo) => void | Promise<void>;
}

export interface WorkerDeps {
  documents: Client<typeof DocumentService>;
  processing: Client<typeof DocumentProcessingService>;
  token: ServiceToken;
  analysis: AnalysisPool;
  /** The consumer's permanent failures per event: the last one records the failure before giving up. */
  maxAttempts: number;
  /** Versions larger than this are a too_large failure without being read. */
  maxBytes: number;
  /** RecordProcessingResult must fit the message limit documents accepts. */
  maxMessageBytes: number;
  /** Deadline of reading a version's bytes (unary calls use the client default). */
  readTimeoutMs: number;
  hooks?: ProcessingHooks;
  logger?: Logger;
}

const UPLOADED = eventKind(DocumentUploadedSchema);
/**
 * Versions up to this size come back with StartProcessing's answer instead of through a
 * ReadContent stream of their own: one call fewer for most documents. Larger ones are streamed,
 * so no single message grows with the document.
 */
export const INLINE_CONTENT_MAX_BYTES = 1024 * 1024;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The event's DocumentUploaded, or a PoisonMessageError: no retry can make bad data readable. */
export function readUploaded(event: EventEnvelope): DocumentUploaded {
  if (event.contentType !== UPLOADED.contentType)
    throw new PoisonMessageError(`${UPLOADED.type} with content-type "${event.contentType.slice(0, 100)}"`);
  let uploaded: DocumentUploaded;
  try {
    uploaded = fromBinary(DocumentUploadedSchema, event.payload);
  } catch (err) {
    throw new PoisonMessageError(`the DocumentUploaded payload does not decode: ${(err as Error).message}`);
  }
  if (!UUID.test(uploaded.documentId)) throw new PoisonMessageError("DocumentUploaded without a valid document_id");
  if (uploaded.version < 1) throw new PoisonMessageError("DocumentUploaded without a version");
  if (uploaded.documentId.toLowerCase() !== event.key.toLowerCase())
    throw new PoisonMessageError("DocumentUploaded whose key is not its document_id");
  return uploaded;
}

const isCode = (err: unknown, code: Code) => ConnectError.from(err).code === code;

/**
 * The processing worker's parts, for startIdempotentConsumer: which events it handles, and its two
 * halves.
 *
 * `prepare` does the work that talks to other services, outside any transaction: claim the
 * version (StartProcessing, whose answer carries a small version's bytes), read larger ones
 * (ReadContent) and analyse it, record the outcome (RecordProcessingResult).
 * Every one of those calls is idempotent on documents' side, which is what makes repeating it
 * safe: a redelivered event finds the outcome already recorded and only publishes it again.
 * `outboxEffect` then names the DocumentProcessed/DocumentFailed event, which the consumer writes
 * into this service's outbox with the statement that records the upload event in the inbox: the
 * outcome event is published exactly when the upload event counts as handled.
 */
export function processingWorker(deps: WorkerDeps): {
  handles: (event: EventEnvelope) => boolean;
  prepare: EventPreparer<OutboxEvent | undefined>;
  outboxEffect: (
    event: EventEnvelope,
    delivery: DeliveryInfo,
    prepared: OutboxEvent | undefined,
  ) => OutboxEvent | undefined;
} {
  const log = (deps.logger ?? rootLogger).child({ component: "processing" });
  const { documents, processing, token } = deps;

  /** A call as the service; a token refused mid-life (keys rotated, clock skew) is exchanged once more. */

  async function readVersion(u: DocumentUploaded, inline: Uint8Array | undefined): Promise<Uint8Array> {
    // The event says how big the version is; a producer that left it out is bounded by the maximum.
    const expected = u.sizeBytes > 0n ? Number(u.sizeBytes) : undefined;
    const limit = expected ?? deps.maxBytes;
    if (inline && inline.length <= limit && (expected === undefined || inline.length === expected)) {
      // A copy of its own: the decoded field is a view into the whole response's buffer.
      return new Uint8Array(inline);
    }
    return token.call(async (headers) => {
      const chunks: Uint8Array[] = [];
      let total = 0;
      for await (const m of documents.readContent(
        { documentId: u.documentId, version: u.version },
        { headers, timeoutMs: deps.readTimeoutMs },
      )) {
        total += m.chunk.length;
        if (total > limit) throw new Error(`version ${u.version} has more than the ${limit} bytes expected`);
        chunks.push(m.chunk);
      }
      if (expected !== undefined && total !== expected)
        throw new Error(`read ${total} bytes of version ${u.version}, expected ${expected}`);
      // One buffer of its own (not Node's shared pool), so it can be handed to the analysis thread.
      const bytes = new Uint8Array(total);
      let at = 0;
      for (const c of chunks) (bytes.set(c, at), (at += c.length));
      return bytes;
    });
  }

  async function analyse(
    u: DocumentUploaded,
    delivery: DeliveryInfo,
    /** The bytes StartProcessing handed over, if it did. */
    inline: Uint8Array | undefined,
  ): Promise<RecordProcessingResultRequest["outcome"]> {
    if (u.sizeBytes > BigInt(deps.maxBytes)) {
      return {
        case: "failure",
        value: toProcessingFailure({
          ok: false,
          reason: "too_large",
          message: `The file is ${u.sizeBytes} bytes; documents larger than ${deps.maxBytes} bytes are not processed.`,
        }),
      };
    }
    await deps.hooks?.beforeAnalysis?.(u.documentId, u.version, delivery);
    const bytes = await readVersion(u, inline);
    const started = performance.now();
    const analysis = await deps.analysis.analyze(bytes, u.mimeType || undefined);
    log.debug("analysed", {
      document_id: u.documentId,
      version: u.version,
      ok: analysis.ok,
      ms: Math.round(performance.now() - started),
    });
    return analysis.ok
      ? { case: "result", value: toProcessingResult(analysis, deps.maxMessageBytes) }
      : { case: "failure", value: toProcessingFailure(analysis) };
  }

  /** The outcome on record for the version, producing it first if there is none; undefined if the document is gone. */
  async function outcomeOf(u: DocumentUploaded, delivery: DeliveryInfo): Promise<ProcessingOutcome | undefined> {
    const key = { documentId: u.documentId, version: u.version };
    const inlineMax = Math.min(INLINE_CONTENT_MAX_BYTES, deps.maxBytes);
    const start = await token.call((headers) =>
      processing.startProcessing({ ...key, inlineContentMaxBytes: inlineMax }, { headers }),
    );
    if (!start.proceed) {
      if (!start.outcome)
        throw new Error(`documents said version ${u.version} of ${u.documentId} has an outcome but sent none`);
      log.info("version already has an outcome; publishing it again", {
        document_id: u.documentId,
        version: u.version,
      });
      return start.outcome;
    }
    const outcome = await analyse(u, delivery, start.content);
    // The answer is authoritative: when two workers raced, the first outcome recorded stands.
    const recorded = await token.call((headers) => processing.recordProcessingResult({ ...key, outcome }, { headers }));
    return recorded.outcome;
  }

  /** Best effort on the last attempt: the document says FAILED instead of staying in PROCESSING. */
  async function giveUp(u: DocumentUploaded, error: unknown): Promise<void> {
    try {
      await token.call((headers) =>
        processing.recordProcessingResult(
          {
            documentId: u.documentId,
            version: u.version,
            outcome: { case: "failure", value: processingErrorFailure(deps.maxAttempts) },
          },
          { headers },
        ),
      );
      log.warn("recorded the version as failed after its last attempt", {
        document_id: u.documentId,
        version: u.version,
        error: error as Error,
      });
    } catch (err) {
      log.error("could not record the failure after the last attempt; the document stays in processing", {
        document_id: u.documentId,
        version: u.version,
        error: err as Error,
      });
    }
  }

  return {
    // Only uploads. The worker's own processed/failed events share the topic (and so will other
    // services' later); the consumer passes over them without recording them in the inbox.
    handles: (event) => isEventOf(event, DocumentUploadedSchema),

    async prepare(event, delivery) {
      const uploaded = readUploaded(event);
      try {
        const outcome = await outcomeOf(uploaded, delivery);
        if (!outcome) return undefined;
        const out = outcomeEvent(outcome);
        log.info("version processed", {
          document_id: uploaded.documentId,
          version: uploaded.version,
          event_type: out.type,
          attempt: delivery.attempt,
        });
        return out;
      } catch (err) {
        if (isCode(err, Code.NotFound)) {
          // Deleted since it was uploaded: nothing to process, and nobody to tell.
          log.info("document no longer exists; nothing to process", {
            document_id: uploaded.documentId,
            version: uploaded.version,
          });
          return undefined;
        }
        // Only a permanent failure can be the last try: a transient one (documents restarting, a
        // deadline under load) is retried until it passes, and must not mark the document FAILED.
        if (classifyFailure(err) === "permanent" && delivery.failures + 1 >= deps.maxAttempts)
          await giveUp(uploaded, err);
        throw err;
      }
    },

    // The outcome event's id is stable per outcome: one an earlier delivery (under another event
    // id) queued is kept.
    outboxEffect: (_event, _delivery, prepared) => prepared,
  };
}
