/** Turns texts into vectors for the kNN leg of hybrid search. */
export interface Embedder {
  /** Names the model in responses and in the stored vectors' provenance. */
  readonly name: string;
  readonly dimensions: number;
  /** One vector per text, in order, each of length `dimensions`. */
  embed(texts: readonly string[]): Promise<Float32Array[]>;
}

/**
 * An embedder could not answer. `transient` says whether trying again later can help (timeouts,
 * refused connections, 429 and 5xx) or not (a refused request, an answer of the wrong shape).
 */
export class EmbeddingError extends Error {
  constructor(
    message: string,
    readonly transient: boolean,
  ) {
    super(message);
    this.name = "EmbeddingError";
  }
}

/** Scales a vector to unit length in place (cosine distance then equals 1 − dot product). */
export function normalizeL2(v: Float32Array): Float32Array {
  let sum = 0;
  for (const x of v) sum += x * x;
  if (sum === 0) return v;
  const inv = 1 / Math.sqrt(sum);
  for (let i = 0; i < v.length; i++) v[i]! *= inv;
  return v;
}
