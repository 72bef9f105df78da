import type { EmbedderSettings } from "./config.js";
import type { Embedder } from "./embedder.js";
import { HashingEmbedder } from "./hashing.js";
import { StaticModelEmbedder } from "./local-model.js";
import { OpenAIEmbedder } from "./openai.js";

export {
  EMBEDDERS,
  HASHING_DIMENSIONS,
  embedderConfigSpec,
  embedderSettings,
  relatedMinSimilarity,
  type EmbedderSettings,
} from "./config.js";
export { EmbeddingError, normalizeL2, type Embedder } from "./embedder.js";
export { HashingEmbedder } from "./hashing.js";
export { LocalModelError, StaticModelEmbedder } from "./local-model.js";
export { OpenAIEmbedder } from "./openai.js";

/**
 * The embedder the settings name, ready to use, or undefined when vectors are off. An endpoint or
 * model directory that cannot be used fails here, at start, with a sentence.
 */
export async function createEmbedder(settings: EmbedderSettings): Promise<Embedder | undefined> {
  switch (settings.kind) {
    case "off":
      return undefined;
    case "hashing":
      return new HashingEmbedder({ dimensions: settings.dimensions });
    case "openai":
      return OpenAIEmbedder.connect({ url: settings.url, model: settings.model, apiKey: settings.apiKey });
    case "local":
      return StaticModelEmbedder.load(settings.directory);
  }
}
