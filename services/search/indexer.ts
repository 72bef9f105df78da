import { createHash } from "node:crypto";
import { fromBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { Kysely } from "kysely";
import {
  DocumentType,
  Visibility,
  type Document,
  type DocumentService,
  type ProcessingResult,
} from "../../gen/medmesh/documents/v1/documents_pb.js";
import {
  DocumentDeletedSchema,
  DocumentIndexedSchema,
  DocumentProcessedSchema,
  DocumentUpdatedSchema,
} from "../../gen/medmesh/events/v1/document_events_pb.js";
import type { ServiceToken } from "../../platform/auth/service-token.js";
import {
  contractEvent,
  enqueue,
  eventKind,
  eventType,
  isEventOf,
  PoisonMessageError,
  type EventEnvelope,
  type EventHandler,
  type EventPreparer,
} from "../../platform/events/index.js";
import { enumNames } from "../../platform/grpc/enum-names.js";
import { logger as rootLogger, type Logger } from "../../platform/telemetry/logger.js";
import type { IndexStore } from "./store.js";
import { EmbeddingError } from "./embedding/index.js";
import { embedMany, embeddingText, type VectorLeg } from "./vectors.js";
import type { IndexMetadata, IndexRow, SearchDB } from "./tables.js";

export const EVENT_SOURCE = "/medmesh/search";

/**
 * Body text beyond this is not indexed: the abstract and the start of a paper carry what it is
 * about, and a tsvector has a size limit (1 MB) that a whole book would pass.
 */
export const BODY_INDEX_CHARS = 200_000;

const documentTypes = enumNames<DocumentType>(DocumentType, "DocumentType");
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The event's message, or a PoisonMessageError: no retry makes bad data readable. */
function decode<D extends DescMessage>(schema: D, event: EventEnvelope): MessageShape<D> {
  const kind = eventKind(schema);
  if (event.contentType !== kind.contentType)
    throw new PoisonMessageError(`${kind.type} with content-type "${event.contentType.slice(0, 100)}"`);
  let message: MessageShape<D>;
  try {
    message = fromBinary(schema, event.payload);
  } catch (err) {
    throw new PoisonMessageError(`the ${schema.name} payload does not decode: ${(err as Error).message}`);
  }
  const id = (message as { documentId?: string }).documentId ?? "";
  if (!UUID.test(id)) throw new PoisonMessageError(`${schema.name} without a valid document_id`);
  if (id.toLowerCase() !== event.key.toLowerCase())
    throw new PoisonMessageError(`${schema.name} whose key is not its document_id`);
  return message;
}

/** A UUID made from its inputs, so that every delivery of one version's index event has the same id. */
function stableId(...parts: Array<string | number>): string {
  const h = createHash("sha256").update(parts.join("\n")).digest();
  h[6] = (h[6]! & 0x0f) | 0x80;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const hex = h.subarray(0, 16).toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** The metadata documents owns, as the index keeps it. */
export function toMetadata(doc: Document): IndexMetadata {
  return {
    title: doc.title,
    authors: doc.authors,
    journal: doc.journal || null,
    specialty: doc.specialty || null,
    document_type: documentTypes.label(doc.documentType, "other"),
    publication_date: doc.publicationDate || null,
    visibility: doc.visibility === Visibility.PLATFORM ? "platform" : "private",
    owner: doc.uploadedBy,
  };
}

/** The index row for a document's version, from its metadata and what processing found. */
export function toIndexRow(doc: Document, version: number, result: ProcessingResult): IndexRow {
  const meta = toMetadata(doc);
  return {
    ...meta,
    document_id: doc.id,
    version,
    title: meta.title || result.title,
    abstract: result.abstract,
    body: result.text.length > BODY_INDEX_CHARS ? result.text.slice(0, BODY_INDEX_CHARS) : result.text,
    entities: [...new Set(result.entitySummary.map((e) => e.canonical).filter(Boolean))],
    keywords: result.keywords,
    // What the uploader said wins over what processing found.
    specialty: meta.specialty ?? (result.specialty || null),
  };
}

/** What an event asks of the index, worked out before the transaction opens. */
export type IndexAction =
  /** embedding: the row's vector literal; absent without a vector leg or for a text without words. */
  | { kind: "upsert"; row: IndexRow; embedding?: string }
  /** vector: the row's vector for a new title, computed from the stored text of `vector.version`. */
  | { kind: "update"; documentId: string; meta: IndexMetadata; vector?: { version: number; embedding: string } }
  | { kind: "remove"; documentId: string }
  | { kind: "none" };

export interface IndexerDeps {
  documents: Client<typeof DocumentService>;
  token: ServiceToken;
  store: IndexStore;
  /** Set when the index keeps vectors: each upserted version gets its embedding. */
  vectors?: VectorLeg;
  logger?: Logger;
}

const isCode = (err: unknown, code: Code) => ConnectError.from(err).code === code;

/**
 * The indexer's parts, for startIdempotentConsumer. `prepare` reads what it needs from documents
 * (outside any transaction); `handler` writes the index and, for a new version, DocumentIndexed
 * in the outbox, in the transaction that records the event in the inbox.
 */
export function indexer(deps: IndexerDeps): {
  handles: (event: { type: string }) => boolean;
  prepare: EventPreparer<IndexAction>;
  /** prepare for a batch of events: documents read concurrently, one embedder call. */
  prepareBatch: (events: EventEnvelope[]) => Promise<IndexAction[]>;
  handler: EventHandler<SearchDB, IndexAction>;
  /** What indexing a document's version takes, read from documents (the reindex reuses it). */
  actionFor: (documentId: string, version: number) => Promise<IndexAction>;
  /** The upsert of a row, with its vector when the index keeps them (embedded here, outside any transaction). */
  upsertAction: (row: IndexRow) => Promise<IndexAction>;
  /** A metadata change's action: with a new title, the row's vector computed again. */
  updateAction: (documentId: string, meta: IndexMetadata) => Promise<IndexAction>;
  /** Applies an action within a transaction. */
  apply: (trx: Kysely<SearchDB>, action: IndexAction) => Promise<void>;
} {
  const log = (deps.logger ?? rootLogger).child({ component: "indexer" });
  const { documents, token, store } = deps;

  /** The live document, or undefined when it is gone. */
  async function documentOf(id: string): Promise<Document | undefined> {
    try {
      return (await token.call((headers) => documents.getDocument({ id }, { headers }))).document;
    } catch (err) {
      if (isCode(err, Code.NotFound)) return undefined;
      throw err;
    }
  }

  async function processedRow(documentId: string, version: number): Promise<IndexAction> {
    const doc = await documentOf(documentId);
    if (!doc) return { kind: "remove", documentId };
    // A newer version exists: its own event brings it. Indexing this one would only be undone.
    if (doc.version > version) return { kind: "none" };
    let outcome;
    try {
      outcome = (
        await token.call((headers) =>
          documents.getProcessingResult({ documentId, version, maxTextChars: BODY_INDEX_CHARS }, { headers }),
        )
      ).outcome;
    } catch (err) {
      if (isCode(err, Code.NotFound)) return { kind: "remove", documentId };
      throw err;
    }
    if (outcome?.outcome.case !== "result") return { kind: "none" };
    return { kind: "upsert", row: toIndexRow(doc, version, outcome.outcome.value) };
  }

  async function upsertAction(row: IndexRow): Promise<IndexAction> {
    return (await withEmbeddings([{ kind: "upsert", row }]))[0]!;
  }

  /**
   * The actions, with the vectors of their upserts computed by one embedder call (one request to
   * an embeddings endpoint for a whole batch), outside any transaction.
   */
  async function withEmbeddings(actions: IndexAction[]): Promise<IndexAction[]> {
    const upserts = actions.filter((a): a is Extract<IndexAction, { kind: "upsert" }> => a.kind === "upsert");
    if (!deps.vectors || upserts.length === 0) return actions;
    const vectors = await embedTexts(upserts.map((a) => embeddingText(a.row)));
    const embedded = new Map(upserts.map((a, n) => [a, vectors[n]]));
    return actions.map((a) => {
      if (a.kind !== "upsert") return a;
      const embedding = embedded.get(a);
      return embedding === undefined ? a : { ...a, embedding };
    });
  }

  async function embedTexts(texts: string[]): Promise<Array<string | undefined>> {
    try {
      return await embedMany(deps.vectors!.embedder, texts);
    } catch (err) {
      // An endpoint that is down or busy clears by itself: retried without a limit, like documents
      // being down. Any other answer is permanent (the consumer's dead-letter path).
      if (err instanceof EmbeddingError && err.transient) throw new ConnectError(err.message, Code.Unavailable);
      throw err;
    }
  }

  /** A metadata change; with a new title, the row's vector again (it is made of the title and the text). */
  async function updateAction(documentId: string, meta: IndexMetadata): Promise<IndexAction> {
    const action: IndexAction = { kind: "update", documentId, meta };
    if (!deps.vectors || !meta.title) return action;
    const stored = await store.embeddingSource(documentId);
    if (!stored || stored.title === meta.title) return action;
    const [embedding] = await embedTexts([embeddingText({ ...stored, title: meta.title })]);
    return embedding === undefined ? action : { ...action, vector: { version: stored.version, embedding } };
  }

  /** What an event asks of the index, without the vectors of upserts (withEmbeddings adds them). */
  async function actionOf(event: EventEnvelope): Promise<IndexAction> {
    if (isEventOf(event, DocumentProcessedSchema)) {
      const e = decode(DocumentProcessedSchema, event);
      return processedRow(e.documentId, e.version);
    }
    if (isEventOf(event, DocumentDeletedSchema)) {
      return { kind: "remove", documentId: decode(DocumentDeletedSchema, event).documentId };
    }
    const e = decode(DocumentUpdatedSchema, event);
    const doc = await documentOf(e.documentId);
    if (!doc) return { kind: "remove", documentId: e.documentId };
    // Only the metadata is read again: the text belongs to the version, which did not change.
    return updateAction(e.documentId, toMetadata(doc));
  }

  return {
    handles: (event) =>
      isEventOf(event, DocumentProcessedSchema) ||
      isEventOf(event, DocumentDeletedSchema) ||
      isEventOf(event, DocumentUpdatedSchema),

    async prepare(event) {
      return (await withEmbeddings([await actionOf(event)]))[0]!;
    },

    // Documents are read for every event at once (they are different documents, or the same one
    // read twice, which the version checks make harmless), and embedded by one call.
    prepareBatch: async (events) => withEmbeddings(await Promise.all(events.map(actionOf))),

    handler: (_event, trx, _delivery, action) => apply(trx, action),
    actionFor: async (documentId, version) => (await withEmbeddings([await processedRow(documentId, version)]))[0]!,
    upsertAction,
    updateAction,
    apply,
  };

  async function apply(trx: Kysely<SearchDB>, action: IndexAction): Promise<void> {
    switch (action.kind) {
      case "none":
        return;
      case "remove":
        if (await store.remove(trx, action.documentId))
          log.info("removed from the index", { document_id: action.documentId });
        return;
      case "update":
        await store.updateMetadata(trx, action.documentId, action.meta, action.vector);
        return;
      case "upsert": {
        const { row } = action;
        if (!(await store.upsert(trx, row, action.embedding))) return;
        await enqueue(
          trx,
          contractEvent(
            DocumentIndexedSchema,
            { documentId: row.document_id, version: row.version, indexTime: timestampNow() },
            {
              id: stableId(eventType(DocumentIndexedSchema), row.document_id, row.version),
              source: EVENT_SOURCE,
              key: row.document_id,
            },
          ),
          // A redelivered event rewrites the row; its announcement is already queued.
          { ifAbsent: true },
        );
        // Debug, not info: a line per document is a measurable share of indexing's CPU.
        log.debug("indexed", { document_id: row.document_id, version: row.version });
        return;
      }
    }
  }
}
