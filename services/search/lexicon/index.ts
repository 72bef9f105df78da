export {
  AMBIGUOUS_ABBREVIATIONS,
  CAPITALS_ONLY,
  GROUPS,
  LEXICON,
  LEXICON_INDEX,
  indexLexicon,
  longestMatch,
  parseConceptRow,
  type Concept,
  type FormEntry,
  type Group,
  type LexiconIndex,
} from "./lexicon.js";
export { matchKey, splitWords, words, type Word } from "./words.js";
