import { ConfigError, env, loadConfig } from "../../../platform/config/env.js";

/**
 * Which embedder runs, read from the environment. Spread `embedderConfigSpec` into the service's
 * configSpec (so the README check covers the names); `embedderSettings` turns the parsed values
 * into one choice, with the rules that span two variables.
 */
export const EMBEDDERS = ["off", "hashing", "openai", "local"] as const;
export type EmbedderKind = (typeof EMBEDDERS)[number];

export const embedderConfigSpec = {
  SEARCH_EMBEDDER: env.oneOf(
    "vectors for hybrid search: off, hashing (in-repo, deterministic), openai (an OpenAI-compatible URL) or local (a model directory)",
    EMBEDDERS,
    "hashing",
  ),
  SEARCH_EMBEDDINGS_URL: env.url(
    "the embeddings endpoint for SEARCH_EMBEDDER=openai, e.g. http://host:8080/v1/embeddings",
    ["http:", "https:"],
  ),
  SEARCH_EMBEDDINGS_MODEL: env.optionalString(
    "the model name for SEARCH_EMBEDDER=openai, or the model directory for SEARCH_EMBEDDER=local",
  ),
  SEARCH_EMBEDDINGS_API_KEY: env.optionalString("bearer token for SEARCH_EMBEDDINGS_URL, if it wants one"),
  SEARCH_RELATED_MIN_SIMILARITY: env.optionalString(
    "cosine similarity (0-1) on the embedder's scale from which a query's nearest documents join its results without matching its words; unset or off: they never join, the vector leg only reorders",
  ),
};

/** SEARCH_RELATED_MIN_SIMILARITY read: the floor, or undefined when related documents never join. */
export function relatedMinSimilarity(source: Record<string, string | undefined>): number | undefined {
  const raw = loadConfig(embedderConfigSpec, source).SEARCH_RELATED_MIN_SIMILARITY?.trim();
  if (raw === undefined || raw === "" || raw === "off") return undefined;
  const v = Number(raw);
  if (!Number.isFinite(v) || v <= 0 || v > 1)
    throw new ConfigError([
      `SEARCH_RELATED_MIN_SIMILARITY must be a number above 0 and at most 1, or off (got "${raw.slice(0, 40)}")`,
    ]);
  return v;
}

export type EmbedderSettings =
  | { kind: "off" }
  | { kind: "hashing"; dimensions: number }
  | { kind: "openai"; url: string; model: string; apiKey?: string }
  | { kind: "local"; directory: string };

/** The hashing embedder's width: pgvector's HNSW is comfortable here, and it matches common small models. */
export const HASHING_DIMENSIONS = 384;

/** Pure: the environment in, one embedder choice out, or a ConfigError naming every problem. */
export function embedderSettings(source: Record<string, string | undefined>): EmbedderSettings {
  const c = loadConfig(embedderConfigSpec, source);
  const problems: string[] = [];
  switch (c.SEARCH_EMBEDDER) {
    case "off":
      return { kind: "off" };
    case "hashing":
      return { kind: "hashing", dimensions: HASHING_DIMENSIONS };
    case "openai":
      if (!c.SEARCH_EMBEDDINGS_URL) problems.push("SEARCH_EMBEDDINGS_URL is required when SEARCH_EMBEDDER=openai");
      if (!c.SEARCH_EMBEDDINGS_MODEL) problems.push("SEARCH_EMBEDDINGS_MODEL is required when SEARCH_EMBEDDER=openai");
      if (problems.length) throw new ConfigError(problems);
      return {
        kind: "openai",
        url: c.SEARCH_EMBEDDINGS_URL!,
        model: c.SEARCH_EMBEDDINGS_MODEL!,
        ...(c.SEARCH_EMBEDDINGS_API_KEY ? { apiKey: c.SEARCH_EMBEDDINGS_API_KEY } : {}),
      };
    case "local":
      if (!c.SEARCH_EMBEDDINGS_MODEL) {
        throw new ConfigError(["SEARCH_EMBEDDINGS_MODEL must name the model directory when SEARCH_EMBEDDER=local"]);
      }
      return { kind: "local", directory: c.SEARCH_EMBEDDINGS_MODEL };
  }
}
