import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { normalizeL2, type Embedder } from "./embedder.js";

/**
 * A static embedding model read from a local directory, nothing downloaded: `tokenizer.json`
 * (Hugging Face tokenizers format, WordPiece model) and `model.safetensors` holding one
 * [vocabulary × dimensions] matrix (float32 or float16) — the layout of distilled static models such
 * as Model2Vec's. A text's vector is the mean of its tokens' rows, L2-normalised.
 *
 * Transformer models (ONNX weights) need a runtime such as onnxruntime/transformers.js, which this
 * repository does not ship; a directory of that kind is refused with a sentence saying so.
 */

interface WordPiece {
  vocab: Map<string, number>;
  unk: number | undefined;
  prefix: string;
  maxCharsPerWord: number;
  lowercase: boolean;
  stripAccents: boolean;
  /** Token ids never averaged in ([CLS], [PAD], …). */
  special: Set<number>;
}

export class LocalModelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LocalModelError";
  }
}

export class StaticModelEmbedder implements Embedder {
  readonly name: string;

  private constructor(
    private readonly tokenizer: WordPiece,
    private readonly rows: Float32Array,
    readonly dimensions: number,
    directory: string,
  ) {
    this.name = `local:${path.basename(path.resolve(directory))}`;
  }

  static async load(directory: string): Promise<StaticModelEmbedder> {
    const dir = path.resolve(directory);
    const isDir = await stat(dir).then(
      (s) => s.isDirectory(),
      () => false,
    );
    if (!isDir) throw new LocalModelError(`the model directory ${dir} does not exist or is not a directory`);
    const tokenizerFile = path.join(dir, "tokenizer.json");
    const weightsFile = path.join(dir, "model.safetensors");
    const [tokenizerText, weights] = await Promise.all([
      readFile(tokenizerFile, "utf8").catch(() => undefined),
      readFile(weightsFile).catch(() => undefined),
    ]);
    if (tokenizerText === undefined || weights === undefined) {
      const onnx = await stat(path.join(dir, "onnx")).then(
        () => true,
        () => false,
      );
      throw new LocalModelError(
        onnx
          ? `${dir} holds an ONNX transformer model; running one needs a runtime (onnxruntime) this build does not include — use a static model directory (tokenizer.json + model.safetensors) or SEARCH_EMBEDDER=openai`
          : `${dir} must contain tokenizer.json and model.safetensors (a static embedding model)`,
      );
    }
    const tokenizer = parseTokenizer(tokenizerText, tokenizerFile);
    const { rows, shape } = readMatrix(weights, weightsFile);
    if (shape[0] < maxId(tokenizer.vocab) + 1) {
      throw new LocalModelError(
        `${weightsFile} has ${shape[0]} rows but the vocabulary in tokenizer.json needs ${maxId(tokenizer.vocab) + 1}`,
      );
    }
    return new StaticModelEmbedder(tokenizer, rows, shape[1], dir);
  }

  async embed(texts: readonly string[]): Promise<Float32Array[]> {
    return texts.map((t) => this.embedOne(t));
  }

  /** The token ids a text becomes (exposed for tests and for explaining a vector). */
  tokenize(text: string): number[] {
    const t = this.tokenizer;
    let s = text;
    if (t.stripAccents) s = s.normalize("NFD").replace(/\p{M}/gu, "");
    if (t.lowercase) s = s.toLowerCase();
    const ids: number[] = [];
    // BERT-style pre-tokenisation: whitespace splits, each punctuation mark is a word of its own.
    for (const word of s.match(/[\p{L}\p{N}]+|[^\s\p{L}\p{N}]/gu) ?? []) {
      if (word.length > t.maxCharsPerWord) {
        if (t.unk !== undefined) ids.push(t.unk);
        continue;
      }
      const pieces: number[] = [];
      let start = 0;
      let failed = false;
      while (start < word.length) {
        let end = word.length;
        let found: number | undefined;
        while (end > start) {
          const piece = (start > 0 ? t.prefix : "") + word.slice(start, end);
          found = t.vocab.get(piece);
          if (found !== undefined) break;
          end--;
        }
        if (found === undefined) {
          failed = true;
          break;
        }
        pieces.push(found);
        start = end;
      }
      if (failed) {
        if (t.unk !== undefined) ids.push(t.unk);
      } else ids.push(...pieces);
    }
    return ids;
  }

  private embedOne(text: string): Float32Array {
    const v = new Float32Array(this.dimensions);
    let n = 0;
    for (const id of this.tokenize(text)) {
      if (this.tokenizer.special.has(id)) continue;
      const base = id * this.dimensions;
      for (let i = 0; i < this.dimensions; i++) v[i]! += this.rows[base + i]!;
      n++;
    }
    if (n > 0) for (let i = 0; i < this.dimensions; i++) v[i]! /= n;
    return normalizeL2(v);
  }
}

function maxId(vocab: Map<string, number>): number {
  let max = -1;
  for (const id of vocab.values()) if (id > max) max = id;
  return max;
}

function parseTokenizer(text: string, file: string): WordPiece {
  let json: {
    model?: {
      type?: string;
      vocab?: unknown;
      unk_token?: string;
      continuing_subword_prefix?: string;
      max_input_chars_per_word?: number;
    };
    normalizer?: { type?: string; lowercase?: boolean; strip_accents?: boolean | null } | null;
    added_tokens?: { id: number; special?: boolean }[];
  };
  try {
    json = JSON.parse(text);
  } catch {
    throw new LocalModelError(`${file} is not JSON`);
  }
  const model = json.model;
  if (model?.type !== "WordPiece") {
    throw new LocalModelError(
      `${file} uses a ${model?.type ?? "missing"} tokenizer model; only WordPiece is supported`,
    );
  }
  if (!model.vocab || typeof model.vocab !== "object" || Array.isArray(model.vocab)) {
    throw new LocalModelError(`${file} has no WordPiece vocabulary`);
  }
  const vocab = new Map<string, number>();
  for (const [token, id] of Object.entries(model.vocab as Record<string, unknown>)) {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0) {
      throw new LocalModelError(`${file}: the vocabulary id of ${JSON.stringify(token)} is not a whole number`);
    }
    vocab.set(token, id);
  }
  const lowercase = json.normalizer?.type === "BertNormalizer" ? json.normalizer.lowercase !== false : false;
  // BertNormalizer strips accents when it lower-cases unless told otherwise.
  const stripAccents =
    json.normalizer?.type === "BertNormalizer" ? (json.normalizer.strip_accents ?? lowercase) : false;
  const special = new Set((json.added_tokens ?? []).filter((t) => t.special).map((t) => t.id));
  const unk = model.unk_token !== undefined ? vocab.get(model.unk_token) : undefined;
  return {
    vocab,
    unk,
    prefix: model.continuing_subword_prefix ?? "##",
    maxCharsPerWord: model.max_input_chars_per_word ?? 100,
    lowercase,
    stripAccents: !!stripAccents,
    special,
  };
}

/** The one 2-D tensor of a safetensors file, as float32 rows. */
function readMatrix(buf: Buffer, file: string): { rows: Float32Array; shape: [number, number] } {
  if (buf.length < 8) throw new LocalModelError(`${file} is too short to be a safetensors file`);
  const headerLength = Number(buf.readBigUInt64LE(0));
  if (headerLength <= 0 || 8 + headerLength > buf.length) {
    throw new LocalModelError(`${file} is not a safetensors file (its header length is out of range)`);
  }
  let header: Record<string, { dtype?: string; shape?: number[]; data_offsets?: [number, number] }>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + headerLength).toString("utf8"));
  } catch {
    throw new LocalModelError(`${file} is not a safetensors file (its header is not JSON)`);
  }
  const tensors = Object.entries(header).filter(([name]) => name !== "__metadata__");
  const matrices = tensors.filter(([, t]) => t.shape?.length === 2);
  if (matrices.length !== 1) {
    throw new LocalModelError(`${file} must hold exactly one 2-D tensor (the embeddings); it holds ${matrices.length}`);
  }
  const [name, t] = matrices[0]!;
  const [rowsCount, dims] = t.shape as [number, number];
  const [start, end] = t.data_offsets ?? [0, -1];
  const data = buf.subarray(8 + headerLength + start, 8 + headerLength + end);
  const count = rowsCount * dims;
  const width = t.dtype === "F32" ? 4 : t.dtype === "F16" ? 2 : 0;
  if (!width) throw new LocalModelError(`${file}: tensor ${name} is ${t.dtype}; only F32 and F16 are supported`);
  if (data.length !== count * width || end > buf.length - 8 - headerLength) {
    throw new LocalModelError(
      `${file}: tensor ${name} should be ${count * width} bytes for shape ${rowsCount}×${dims}`,
    );
  }
  const rows = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    rows[i] = width === 4 ? data.readFloatLE(i * 4) : halfToFloat(data.readUInt16LE(i * 2));
    if (!Number.isFinite(rows[i]))
      throw new LocalModelError(`${file}: tensor ${name} holds a value that is not finite`);
  }
  return { rows, shape: [rowsCount, dims] };
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}
