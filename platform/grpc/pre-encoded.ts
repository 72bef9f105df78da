/**
 * Responses whose wire bytes a handler already holds: a cache that answers the same message many
 * times encodes it once, and the adapter sends those bytes instead of encoding it again on every
 * call. The message itself still travels through the interceptors as usual; it must not change
 * once its bytes are attached (freeze it), since the bytes would no longer say the same.
 */
const encodings = new WeakMap<object, Uint8Array>();

/** Attaches `bytes`, which must be exactly the message's binary encoding, to `message`. */
export function withEncoding<T extends object>(message: T, bytes: Uint8Array): T {
  encodings.set(message, bytes);
  return message;
}

/** The bytes attached to `message` by withEncoding, if any. */
export function encodingOf(message: unknown): Uint8Array | undefined {
  return typeof message === "object" && message !== null ? encodings.get(message) : undefined;
}
