export { analyzeDocument, type AnalyzeInput, type AnalyzeOptions, type DocumentAnalysis } from "./analyze.js";
export { extractCitations, groupCitations, type Citation, type CitationType } from "./citations.js";
export {
  defaultMatcher,
  EntityMatcher,
  findEntities,
  foldWord,
  summarizeEntities,
  type EntityMatch,
  type EntitySummary,
  type MatchKind,
} from "./entities.js";
export { decodeEntities, htmlToText, type HtmlText } from "./html.js";
export { guessLanguage } from "./language.js";
export { LEXICON, SPECIALTIES, type EntityType, type LexiconTerm, type Specialty } from "./lexicon/index.js";
export { assemblePageText, extractPdfText, type PdfOptions, type PdfText } from "./pdf.js";
export { scoreQuality, WEIGHTS as QUALITY_WEIGHTS, type QualityInput, type QualityScore } from "./quality.js";
export { detectSpecialty, type SpecialtyResult, type SpecialtyScore } from "./specialty.js";
export { detectStructure, type DocumentStructure } from "./structure.js";
export { decodeLegacyText, decodeText, normalizeText } from "./text.js";
export { failure, type ExtractionFailure, type FailureReason } from "./types.js";
