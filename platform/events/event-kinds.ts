import {
  create,
  getOption,
  hasOption,
  toBinary,
  type DescMessage,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { event as eventOption } from "../../gen/medmesh/eventing/v1/eventing_pb.js";
import { protobufContentType } from "./envelope.js";
import type { OutboxEvent } from "./outbox.js";

/**
 * What the contract says about one event message: the topic it travels on, its CloudEvent type,
 * and the content type its bytes are labelled with. Read from the `medmesh.eventing.v1.event`
 * option, so no producer or consumer spells a topic or a type itself.
 */
export interface EventKind {
  topic: string;
  type: string;
  contentType: string;
}

// Looked up for every event produced and consumed; the descriptor never changes, so decode once.
const kinds = new WeakMap<DescMessage, EventKind | undefined>();

/** The event kind a message declares, or undefined when its contract declares none. */
export function declaredEventKind(schema: DescMessage): EventKind | undefined {
  if (!kinds.has(schema)) {
    const option = hasOption(schema, eventOption) ? getOption(schema, eventOption) : undefined;
    kinds.set(
      schema,
      option?.topic && option.type
        ? { topic: option.topic, type: option.type, contentType: protobufContentType(schema.typeName) }
        : undefined,
    );
  }
  return kinds.get(schema);
}

/** The event kind of a message that is published; a message without one is a contract bug. */
export function eventKind(schema: DescMessage): EventKind {
  const kind = declaredEventKind(schema);
  if (!kind) throw new Error(`${schema.typeName} declares no medmesh.eventing.v1.event option (topic and type)`);
  return kind;
}

export const eventTopic = (schema: DescMessage): string => eventKind(schema).topic;
export const eventType = (schema: DescMessage): string => eventKind(schema).type;

/** Whether a consumed event carries the given message, judged by its CloudEvent type. */
export const isEventOf = (event: { type: string }, schema: DescMessage): boolean => event.type === eventType(schema);

/** Where and how an event is produced; topic, type and content type come from its contract. */
export interface EventOrigin {
  /** Aggregate id; the Kafka key. */
  key: string;
  /** The producing context as a URI reference: /medmesh/documents */
  source: string;
  /** Given when the id must be stable across retries (see processing's outcome events). */
  id?: string;
  time?: Date;
}

/**
 * An outbox event for a contract message: the producer names the schema and the data, the
 * contract supplies topic, CloudEvent type and content type.
 */
export function contractEvent<Desc extends DescMessage>(
  schema: Desc,
  data: MessageInitShape<Desc> | MessageShape<Desc>,
  origin: EventOrigin,
): OutboxEvent {
  const { topic, type, contentType } = eventKind(schema);
  return { ...origin, topic, type, contentType, payload: toBinary(schema, create(schema, data)) };
}
