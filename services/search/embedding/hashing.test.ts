import { describe, expect, it } from "vitest";
import { HashingEmbedder } from "./hashing.js";

const cosine = (a: Float32Array, b: Float32Array) => a.reduce((s, x, i) => s + x * b[i]!, 0);

describe("the hashing embedder", () => {
  const e = new HashingEmbedder();
  const v = (t: string) => e.embedOne(t);

  it("is deterministic, of the stated width and unit length", async () => {
    const [a, b] = await e.embed(["Metformin in type 2 diabetes", "Metformin in type 2 diabetes"]);
    expect(a).toEqual(b);
    expect(a!.length).toBe(384);
    expect(e.dimensions).toBe(384);
    expect(cosine(a!, a!)).toBeCloseTo(1, 5);
    expect(e.name).toBe("hashing-v1-384");
  });

  it("gives a text without words the zero vector (callers store no vector for it)", () => {
    expect([...v(" ,.;")].every((x) => x === 0)).toBe(true);
  });

  it("puts a concept's names near each other (lexicon-aware)", () => {
    const base = v("heart attack outcomes in older adults");
    expect(cosine(base, v("myocardial infarction outcomes in older adults"))).toBeGreaterThan(
      cosine(base, v("asthma outcomes in older adults")) + 0.05,
    );
    expect(cosine(v("Glucophage"), v("metformin"))).toBeGreaterThan(0.4);
    expect(cosine(v("Glucophage"), v("atorvastatin"))).toBeLessThan(0.2);
  });

  it("puts a misspelling near the word (character trigrams)", () => {
    expect(cosine(v("pneumonia"), v("pnuemonia"))).toBeGreaterThan(cosine(v("pneumonia"), v("psoriasis")) + 0.15);
  });

  it("refuses a width it cannot use", () => {
    expect(() => new HashingEmbedder({ dimensions: 3 })).toThrow(/from 16 to 4096/);
  });
});
