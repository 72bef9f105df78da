import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createEmbedder } from "./index.js";
import { LocalModelError, StaticModelEmbedder } from "./local-model.js";

const root = mkdtempSync(path.join(tmpdir(), "medmesh-search-model-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const VOCAB = [
  "[PAD]",
  "[UNK]",
  "[CLS]",
  "[SEP]",
  "heart",
  "attack",
  "my",
  "##oca",
  "##rdial",
  "in",
  "##far",
  "##ction",
  ".",
];

function tokenizerJson(extra: Record<string, unknown> = {}) {
  return JSON.stringify({
    version: "1.0",
    added_tokens: [0, 1, 2, 3].map((id) => ({ id, content: VOCAB[id], special: id !== 1 })),
    normalizer: { type: "BertNormalizer", lowercase: true, strip_accents: null },
    model: {
      type: "WordPiece",
      unk_token: "[UNK]",
      continuing_subword_prefix: "##",
      vocab: Object.fromEntries(VOCAB.map((t, i) => [t, i])),
    },
    ...extra,
  });
}

/** A safetensors file: u64 header length, JSON header, raw little-endian data. */
function safetensors(rows: number[][], dtype: "F32" | "F16" | "I8" = "F32", name = "embeddings"): Buffer {
  const flat = rows.flat();
  const width = dtype === "F32" ? 4 : dtype === "F16" ? 2 : 1;
  const data = Buffer.alloc(flat.length * width);
  flat.forEach((x, i) => {
    if (dtype === "F32") data.writeFloatLE(x, i * 4);
    else if (dtype === "F16") data.writeUInt16LE(floatToHalf(x), i * 2);
    else data.writeInt8(x, i);
  });
  const header = Buffer.from(
    JSON.stringify({
      __metadata__: { format: "pt" },
      [name]: { dtype, shape: [rows.length, rows[0]!.length], data_offsets: [0, data.length] },
    }),
  );
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  return Buffer.concat([len, header, data]);
}

/** Exact for the small integers and halves used here. */
function floatToHalf(x: number): number {
  if (x === 0) return 0;
  const sign = x < 0 ? 0x8000 : 0;
  const a = Math.abs(x);
  const exp = Math.floor(Math.log2(a));
  return sign | ((exp + 15) << 10) | Math.round((a / 2 ** exp - 1) * 1024);
}

/** Row i: a one-hot-ish vector, so means are easy to check by hand. */
const ROWS = VOCAB.map((_, i) => [i % 4 === 0 ? 1 : 0, i % 4 === 1 ? 1 : 0, i % 4 === 2 ? 1 : 0, i % 4 === 3 ? 1 : 0]);

function modelDir(name: string, files: Record<string, string | Buffer>): string {
  const dir = path.join(root, name);
  mkdirSync(dir, { recursive: true });
  for (const [f, content] of Object.entries(files)) writeFileSync(path.join(dir, f), content);
  return dir;
}

describe("a static model directory", () => {
  it("tokenizes with WordPiece and averages the rows of the tokens, unit length", async () => {
    const dir = modelDir("good", { "tokenizer.json": tokenizerJson(), "model.safetensors": safetensors(ROWS) });
    const e = await StaticModelEmbedder.load(dir);
    expect(e.dimensions).toBe(4);
    expect(e.name).toBe("local:good");
    // "Myocardial" → my ##oca ##rdial; "INFARCTION." → in ##far ##ction . ; "zebra" → [UNK]
    expect(e.tokenize("Myocardial INFARCTION. zebra")).toEqual([6, 7, 8, 9, 10, 11, 12, 1]);
    // heart (4 → dim 0) + attack (5 → dim 1): mean [0.5, 0.5, 0, 0], normalised.
    const [v] = await e.embed(["heart attack"]);
    expect([...v!].map((x) => +x.toFixed(6))).toEqual([0.707107, 0.707107, 0, 0]);
    // Special tokens are never averaged in; unknown words are.
    const [u] = await e.embed(["[CLS] zebra"]);
    expect([...u!]).toEqual([0, 1, 0, 0]);
  });

  it("reads float16 weights", async () => {
    const dir = modelDir("half", {
      "tokenizer.json": tokenizerJson(),
      "model.safetensors": safetensors(
        ROWS.map((r) => r.map((x) => x * 0.5)),
        "F16",
      ),
    });
    const [v] = await (await StaticModelEmbedder.load(dir)).embed(["heart"]);
    expect([...v!]).toEqual([1, 0, 0, 0]);
  });

  it("is what createEmbedder gives for SEARCH_EMBEDDER=local", async () => {
    const dir = modelDir("via-factory", { "tokenizer.json": tokenizerJson(), "model.safetensors": safetensors(ROWS) });
    const e = await createEmbedder({ kind: "local", directory: dir });
    expect(e).toBeInstanceOf(StaticModelEmbedder);
    expect(await createEmbedder({ kind: "off" })).toBeUndefined();
    expect((await createEmbedder({ kind: "hashing", dimensions: 64 }))!.dimensions).toBe(64);
  });

  it.each([
    ["a missing directory", () => path.join(root, "nope"), /does not exist or is not a directory/],
    ["an empty directory", () => modelDir("empty", {}), /must contain tokenizer.json and model.safetensors/],
    [
      "an ONNX transformer",
      () => {
        const dir = modelDir("onnx-model", { "config.json": "{}" });
        mkdirSync(path.join(dir, "onnx"), { recursive: true });
        return dir;
      },
      /ONNX transformer model; running one needs a runtime/,
    ],
    [
      "a BPE tokenizer",
      () =>
        modelDir("bpe", {
          "tokenizer.json": tokenizerJson({ model: { type: "BPE", vocab: {} } }),
          "model.safetensors": safetensors(ROWS),
        }),
      /uses a BPE tokenizer model; only WordPiece is supported/,
    ],
    [
      "too few rows for the vocabulary",
      () =>
        modelDir("short", { "tokenizer.json": tokenizerJson(), "model.safetensors": safetensors(ROWS.slice(0, 5)) }),
      /has 5 rows but the vocabulary in tokenizer.json needs 13/,
    ],
    [
      "an integer tensor",
      () => modelDir("int8", { "tokenizer.json": tokenizerJson(), "model.safetensors": safetensors(ROWS, "I8") }),
      /is I8; only F32 and F16 are supported/,
    ],
    [
      "a file that is not safetensors",
      () =>
        modelDir("junk", { "tokenizer.json": tokenizerJson(), "model.safetensors": Buffer.from("not a model at all") }),
      /not a safetensors file/,
    ],
    [
      "a tokenizer that is not JSON",
      () => modelDir("badjson", { "tokenizer.json": "{", "model.safetensors": safetensors(ROWS) }),
      /tokenizer.json is not JSON/,
    ],
  ])("refuses %s with a sentence", async (_what, make, message) => {
    const err = await StaticModelEmbedder.load(make()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LocalModelError);
    expect((err as Error).message).toMatch(message);
  });
});
