import { describe, expect, it } from "vitest";
import { htmlToText } from "./index.js";

// Hostile markup must cost about what ordinary markup of the same size costs. Timings are compared
// with a benign page measured in the same process a moment before, never against a fixed number of
// milliseconds, so a slow or busy machine slows both sides alike. A quadratic path shows up as a
// ratio in the hundreds at this size (the regular-expression extractor took 12 s on the unclosed
// <script> case, against well under 100 ms for the benign page); a linear one stays within a few.
const SIZE = 640 * 1024;
const MAX_RATIO = 10;

const fill = (unit: string, size = SIZE) => unit.repeat(Math.ceil(size / unit.length)).slice(0, size);

/** The fastest of a few runs: noise from other processes only ever adds time. */
function bestMs(html: string, runs: number): number {
  let best = Infinity;
  for (let i = 0; i < runs; i++) {
    const t = performance.now();
    htmlToText(html);
    best = Math.min(best, performance.now() - t);
  }
  return best;
}

const benign = fill(
  '<p class="x">Aspirin reduced the risk of <b>ischaemic stroke</b> &amp; MI in the <a href="#t">trial</a>.</p>\n',
);

const hostile: Record<string, string> = {
  "unclosed <script> tags": fill("<script>"),
  "one unclosed <script> full of '<'": "<script>" + fill("x < y && a<b "),
  "deeply nested <div>s": fill("<div>"),
  "nested <div>s, then end tags that match nothing": fill("<div>", SIZE / 2) + fill("</span>", SIZE / 2),
  "nested dropped elements (<svg>)": fill("<svg>"),
  "nested dropped elements (<nav>)": fill("<nav>"),
  "nothing but '<'": fill("<"),
  "'<a' without an end": fill("<a"),
  "unclosed comments": fill("<!--"),
  "one tag with endless unterminated attributes": "<a " + fill('x="'),
  entities: fill("&amp;&#x3b2;&nbsp;"),
  "long entity-like names": fill("&abcdefghijklmnopqrstuvwxyzabcdef"),
  "oversized numeric references": fill("&#x10FFFF;&#99999999"),
  "a <pre> of blanks": "<pre>" + fill(" \t") + "x</pre>",
  "unclosed <title> tags": fill("<title>"),
};

describe("htmlToText on hostile markup", () => {
  it("costs no more than a small multiple of a benign page of the same size", () => {
    bestMs(benign, 2); // warm the code paths before measuring
    const base = bestMs(benign, 3);
    const slow: string[] = [];
    for (const [name, html] of Object.entries(hostile)) {
      const ms = bestMs(html, 2);
      if (ms > base * MAX_RATIO) slow.push(`${name}: ${ms.toFixed(0)} ms, benign ${base.toFixed(0)} ms`);
    }
    expect(slow).toEqual([]);
  });

  it("grows linearly: sixteen times the unclosed <script>s take about sixteen times as long", () => {
    const small = fill("<script>", SIZE / 8);
    const large = fill("<script>", 2 * SIZE);
    bestMs(small, 1);
    // Interleaved rounds, the fastest of each size: a burst of load from other processes lands on
    // both sizes alike instead of on whichever happened to run during it.
    let one = Infinity;
    let sixteen = Infinity;
    for (let round = 0; round < 5; round++) {
      one = Math.min(one, bestMs(small, 1));
      sixteen = Math.min(sixteen, bestMs(large, 1));
    }
    // Linear is 16, quadratic 256: the bound sits a factor of four from each, because a loaded
    // machine (CI once saw 14.6 for a 4x step under a load average of 15) stretches one size more
    // than the other.
    expect(sixteen / one).toBeLessThan(64);
  });

  it("drops the content of an unclosed <script> instead of showing it as text", () => {
    expect(htmlToText("<p>kept</p><script>var secret = '<p>not text</p>';").text).toBe("kept");
  });

  it("keeps the text after thousands of nested elements", () => {
    expect(htmlToText(fill("<div>", 100_000) + "<p>deep text</p>").text).toBe("deep text");
  });

  it("decodes entities in a long run of them", () => {
    expect(htmlToText("<p>" + "&amp;".repeat(10_000) + "</p>").text).toBe("&".repeat(10_000));
  });
});

describe("htmlToText reads markup as a browser would", () => {
  it("ends a dropped element at its own end tag, not at the first end tag of that name", () => {
    expect(htmlToText("<p>a</p><nav><nav>menu</nav>still menu</nav><p>b</p>").text).toBe("a\n\nb");
  });

  it("does not take an end tag inside a script for the end of the element around it", () => {
    expect(htmlToText("<nav><script>document.write('</nav>')</script>menu</nav><p>body</p>").text).toBe("body");
  });

  it("ends an unclosed <head> where the body starts, keeping the title", () => {
    const r = htmlToText("<html><head><title>T</title><meta charset=utf-8><p>Body text</p></html>");
    expect(r).toEqual({ text: "Body text", title: "T" });
  });

  it("treats a self-closed <svg/> as empty", () => {
    expect(htmlToText("<p>a<svg/>b</p>").text).toBe("ab");
  });

  it("separates words around comments, and keeps a <pre>'s line breaks while trimming blanks around them", () => {
    expect(htmlToText("one<!-- x -->two").text).toBe("one two");
    expect(htmlToText("<pre>a  \tb\n  c</pre>").text).toBe("a b\nc");
  });
});
