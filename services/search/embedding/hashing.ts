import { LEXICON_INDEX, longestMatch, type LexiconIndex } from "../lexicon/lexicon.js";
import { splitWords, type Word } from "../lexicon/words.js";
import { normalizeL2, type Embedder } from "./embedder.js";

/**
 * A deterministic embedder with nothing to download: features are hashed into a fixed number of
 * signed buckets (the hashing trick), so the vector path runs in CI and under `npm start`.
 *
 * Features: each word, each pair of adjacent words, each character trigram of a word (so typos and
 * inflections land nearby), and, for every lexicon concept found, the concept itself — which is what
 * puts "heart attack", "MI" and "myocardial infarction" near each other. It knows no meaning beyond
 * the lexicon; it is a stand-in for a real model, not a substitute.
 */
export interface HashingOptions {
  dimensions?: number;
  lexicon?: LexiconIndex;
}

const WEIGHT = { word: 1, bigram: 0.5, trigram: 0.5, concept: 1.5 } as const;

/** Words too common in abstracts to say anything about the topic. */
const STOP = new Set(
  "a an and are as at be by for from has have in is it its of on or that the this to was were which with we our these those than not no between after before during among into per vs versus".split(
    " ",
  ),
);

export class HashingEmbedder implements Embedder {
  readonly dimensions: number;
  readonly name: string;
  private readonly lexicon: LexiconIndex;

  constructor(options: HashingOptions = {}) {
    this.dimensions = options.dimensions ?? 384;
    if (!Number.isInteger(this.dimensions) || this.dimensions < 16 || this.dimensions > 4096) {
      throw new Error(`hashing embedder dimensions must be a whole number from 16 to 4096 (got ${this.dimensions})`);
    }
    this.lexicon = options.lexicon ?? LEXICON_INDEX;
    this.name = `hashing-v1-${this.dimensions}`;
  }

  async embed(texts: readonly string[]): Promise<Float32Array[]> {
    return texts.map((t) => this.embedOne(t));
  }

  embedOne(text: string): Float32Array {
    const v = new Float32Array(this.dimensions);
    const add = (feature: string, weight: number) => {
      const h = fnv1a(feature);
      // The low bits pick the bucket, the top bit the sign, so collisions cancel on average.
      v[h % this.dimensions]! += h & 0x80000000 ? -weight : weight;
    };
    const ws = splitWords(text);
    for (const c of concepts(ws, this.lexicon)) add(`c:${c}`, WEIGHT.concept);
    const kept = ws.map((w) => w.text).filter((w) => !STOP.has(w) && w !== "s");
    for (let i = 0; i < kept.length; i++) {
      const w = stem(kept[i]!);
      add(`w:${w}`, WEIGHT.word);
      if (i + 1 < kept.length) add(`b:${w} ${stem(kept[i + 1]!)}`, WEIGHT.bigram);
      const padded = `<${w}>`;
      for (let k = 0; k + 3 <= padded.length; k++) add(`t:${padded.slice(k, k + 3)}`, WEIGHT.trigram);
    }
    return normalizeL2(v);
  }
}

function concepts(ws: Word[], lexicon: LexiconIndex): string[] {
  const found: string[] = [];
  for (let i = 0; i < ws.length;) {
    const m = longestMatch(ws, i, lexicon);
    if (m) {
      found.push(m.entry.concept.preferred);
      i += m.length;
    } else i++;
  }
  return found;
}

/** A light suffix strip so "infarctions"/"infarction" and "treated"/"treatment" share a feature. */
function stem(w: string): string {
  if (w.length <= 4) return w;
  for (const suffix of ["ations", "ation", "ments", "ment", "ings", "ing", "ies", "ed", "es", "s"]) {
    if (w.endsWith(suffix) && w.length - suffix.length >= 4) return w.slice(0, -suffix.length);
  }
  return w;
}

/** 32-bit FNV-1a over UTF-16 code units: fast, stable across runs and platforms. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
