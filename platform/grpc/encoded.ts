import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";

/**
 * Responses whose wire bytes a handler already holds, which the adapter (adapter.ts) sends as
 * they are instead of encoding them again. Two shapes, one lookup (encodingOf):
 *
 * - `withEncoding(message, bytes)`: a real message with its bytes attached. Interceptors see the
 *   message as usual; it must not change afterwards (freeze it), or the bytes would no longer say
 *   the same. For a cache that answers the same message many times.
 * - `encodedAs(schema, bytes)`: bytes standing in for a message a streaming handler never built,
 *   for a stream that sends what many streams send, mostly the same bytes. Only the adapter reads
 *   it: a handler that yields it must be served by startGrpcServer.
 */
const attached = new WeakMap<object, Uint8Array>();

class EncodedMessage {
  constructor(readonly bytes: Uint8Array) {}
}

/** Attaches `bytes`, which must be exactly the message's binary encoding, to `message`. */
export function withEncoding<T extends object>(message: T, bytes: Uint8Array): T {
  attached.set(message, bytes);
  return message;
}

/** `bytes` (an encoding of a `schema` message) as a streaming handler's output. */
export function encodedAs<S extends DescMessage>(_schema: S, bytes: Uint8Array): MessageInitShape<S> {
  return new EncodedMessage(bytes) as unknown as MessageInitShape<S>;
}

/** The bytes a handler gave for this response, if it gave any. */
export function encodingOf(message: unknown): Uint8Array | undefined {
  if (message instanceof EncodedMessage) return message.bytes;
  return typeof message === "object" && message !== null ? attached.get(message) : undefined;
}
