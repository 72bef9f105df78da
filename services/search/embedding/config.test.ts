import { describe, expect, it } from "vitest";
import { ConfigError } from "../../../platform/config/env.js";
import { embedderSettings, relatedMinSimilarity } from "./config.js";

describe("embedder settings", () => {
  it("runs the hashing embedder when nothing is set, and nothing when told off", () => {
    expect(embedderSettings({})).toEqual({ kind: "hashing", dimensions: 384 });
    expect(embedderSettings({ SEARCH_EMBEDDER: "off", SEARCH_EMBEDDINGS_URL: "http://x/v1/embeddings" })).toEqual({
      kind: "off",
    });
  });

  it("reads an OpenAI-compatible endpoint, with or without a key", () => {
    const source = {
      SEARCH_EMBEDDER: "openai",
      SEARCH_EMBEDDINGS_URL: "http://127.0.0.1:8080/v1/embeddings",
      SEARCH_EMBEDDINGS_MODEL: "nomic-embed-text",
    };
    expect(embedderSettings(source)).toEqual({
      kind: "openai",
      url: source.SEARCH_EMBEDDINGS_URL,
      model: "nomic-embed-text",
    });
    expect(embedderSettings({ ...source, SEARCH_EMBEDDINGS_API_KEY: "k" })).toMatchObject({ apiKey: "k" });
  });

  it("reads a local model directory", () => {
    expect(embedderSettings({ SEARCH_EMBEDDER: "local", SEARCH_EMBEDDINGS_MODEL: "/models/m" })).toEqual({
      kind: "local",
      directory: "/models/m",
    });
  });

  it.each([
    [{ SEARCH_EMBEDDER: "bert" }, ['SEARCH_EMBEDDER must be one of off, hashing, openai, local (got "bert")']],
    [
      { SEARCH_EMBEDDER: "openai" },
      [
        "SEARCH_EMBEDDINGS_URL is required when SEARCH_EMBEDDER=openai",
        "SEARCH_EMBEDDINGS_MODEL is required when SEARCH_EMBEDDER=openai",
      ],
    ],
    [
      { SEARCH_EMBEDDER: "openai", SEARCH_EMBEDDINGS_URL: "ftp://x", SEARCH_EMBEDDINGS_MODEL: "m" },
      ['SEARCH_EMBEDDINGS_URL must use http: or https: (got "ftp:")'],
    ],
    [
      { SEARCH_EMBEDDER: "local" },
      ["SEARCH_EMBEDDINGS_MODEL must name the model directory when SEARCH_EMBEDDER=local"],
    ],
  ])("refuses %j, naming every problem", (source, problems) => {
    let caught: unknown;
    try {
      embedderSettings(source);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as ConfigError).problems).toEqual(problems);
  });

  it("reads the floor from which related documents join: off unless a similarity is given", () => {
    expect(relatedMinSimilarity({})).toBeUndefined();
    expect(relatedMinSimilarity({ SEARCH_RELATED_MIN_SIMILARITY: "off" })).toBeUndefined();
    expect(relatedMinSimilarity({ SEARCH_RELATED_MIN_SIMILARITY: "0.2" })).toBe(0.2);
    for (const bad of ["0", "1.5", "-0.1", "high"])
      expect(() => relatedMinSimilarity({ SEARCH_RELATED_MIN_SIMILARITY: bad })).toThrow(
        /SEARCH_RELATED_MIN_SIMILARITY must be a number above 0 and at most 1, or off/,
      );
  });
});
