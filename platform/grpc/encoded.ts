import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";

/**
 * A response message its handler has encoded already; the adapter (adapter.ts) sends the bytes
 * as they are. For a stream that sends what many streams send, mostly the same bytes: the
 * handler encodes the shared part once instead of every stream encoding all of it.
 */
export class EncodedMessage {
  constructor(readonly bytes: Uint8Array) {}
}

/**
 * `bytes` (an encoding of a `schema` message) as a handler's output. Only the mesh's adapter
 * understands it: a handler that yields it must be served by startGrpcServer.
 */
export function encodedAs<S extends DescMessage>(_schema: S, bytes: Uint8Array): MessageInitShape<S> {
  return new EncodedMessage(bytes) as unknown as MessageInitShape<S>;
}
