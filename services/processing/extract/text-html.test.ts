import { describe, expect, it } from "vitest";
import { decodeEntities, decodeLegacyText, decodeText, htmlToText, normalizeText } from "./index.js";

describe("normalizeText", () => {
  it("turns CRLF, lone CR, form feeds and Unicode line separators into LF", () => {
    expect(normalizeText("a\r\nb\rc\fd\u2028e")).toBe("a\nb\nc\nd\ne");
  });

  it("removes NUL and other control characters but keeps tabs", () => {
    expect(normalizeText("a\u0000b\u0007c\td")).toBe("abc\td");
  });

  it("keeps at most one blank line, trims trailing spaces, and composes to NFC", () => {
    expect(normalizeText("para one   \n\n\n\n para two")).toBe("para one\n\n para two");
    expect(normalizeText("cafe\u0301")).toBe("caf\u00e9");
  });

  it("maps no-break and other wide spaces to a plain space and drops zero-width characters", () => {
    expect(normalizeText("12\u00a0mg\u2009daily\u200b.")).toBe("12 mg daily.");
  });
});

describe("decodeText", () => {
  it("drops a UTF-8 byte-order mark", () => {
    expect(decodeText(Buffer.from("\ufeffhello"))).toBe("hello");
  });

  it("decodes UTF-16LE and UTF-16BE with their BOMs", () => {
    expect(decodeText(Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from("Asthma", "utf16le")]), "utf-16le")).toBe(
      "Asthma",
    );
    const be = Buffer.from("Asthma", "utf16le").swap16();
    expect(decodeText(Buffer.concat([Buffer.from([0xfe, 0xff]), be]), "utf-16be")).toBe("Asthma");
  });

  it("replaces invalid UTF-8 sequences instead of throwing", () => {
    expect(decodeText(Buffer.from([0x61, 0xc3, 0x28]))).toBe("a\ufffd(");
  });

  it("decodes Windows-1252 typographic characters in 0x80-0x9f", () => {
    expect(decodeText(Buffer.from([0x93, 0x61, 0x94, 0x20, 0x80, 0x96]), "windows-1252")).toBe(
      "\u201ca\u201d \u20ac\u2013",
    );
  });

  it("decodeLegacyText refuses bytes with NULs or dominated by control codes", () => {
    expect(decodeLegacyText(Buffer.from([0x61, 0x00, 0x62]))).toBeUndefined();
    expect(decodeLegacyText(Buffer.from([1, 2, 3, 4, 0x61]))).toBeUndefined();
    expect(decodeLegacyText(Buffer.from("caf\xe9", "latin1"))).toBe("caf\u00e9");
  });
});

describe("htmlToText", () => {
  it("drops script, style, noscript, template, svg and comments, including their text", () => {
    const html =
      "<p>keep</p><script>drop1()</script><style>.drop2{}</style><noscript>drop3</noscript>" +
      "<template><p>drop4</p></template><svg><text>drop5</text><style>x</style></svg><!-- drop6 --><p>also</p>";
    expect(htmlToText(html).text).toBe("keep\n\nalso");
  });

  it("keeps paragraph breaks between blocks, single breaks for <br>, and collapses inline whitespace", () => {
    const { text } = htmlToText(
      "<h1>Title</h1><p>First\n   line<br>second line</p><div>Block <b>bold</b> <i>it</i></div>",
    );
    expect(text).toBe("Title\n\nFirst line\nsecond line\n\nBlock bold it");
  });

  it("decodes named, decimal and hex entities after removing tags, so escaped markup stays text", () => {
    expect(htmlToText("<p>&lt;p&gt; is a tag &amp; 5 &#8805; 3 &#x3b2;-blocker&nbsp;dose</p>").text).toBe(
      "<p> is a tag & 5 \u2265 3 \u03b2-blocker\u00a0dose",
    );
  });

  it("treats a '>' inside a quoted attribute as part of the tag", () => {
    expect(htmlToText('<a title="a > b" href="x">link</a> text').text).toBe("link text");
  });

  it("keeps a bare '<' that does not start a tag", () => {
    expect(htmlToText("<p>eGFR < 60 and HbA1c > 7</p>").text).toBe("eGFR < 60 and HbA1c > 7");
  });

  it("keeps the line breaks inside <pre> that elsewhere would collapse to spaces", () => {
    expect(htmlToText("<pre>BP 140/90\nHR 88</pre><p>a\nb</p>").text).toBe("BP 140/90\nHR 88\n\na b");
  });

  it("puts table cells of one row on one line and rows on separate lines", () => {
    const { text } = htmlToText(
      "<table><tr><th>Drug</th><th>Dose</th></tr><tr><td>metformin</td><td>500 mg</td></tr></table>",
    );
    expect(text).toBe("Drug Dose\nmetformin 500 mg");
  });

  it("returns the decoded <title> separately and not in the text", () => {
    const r = htmlToText("<html><head><title>A &amp; B</title></head><body><p>Body</p></body></html>");
    expect(r).toEqual({ text: "Body", title: "A & B" });
  });

  it("an unterminated comment drops everything after it instead of leaking it", () => {
    expect(htmlToText("<p>kept</p><!-- never closed <p>lost</p>").text).toBe("kept");
  });
});

describe("decodeEntities", () => {
  it("leaves unknown names alone and replaces invalid code points with U+FFFD", () => {
    expect(decodeEntities("&notarealentity; &#0; &#xD800; &#x110000; &#65;")).toBe(
      "&notarealentity; \ufffd \ufffd \ufffd A",
    );
  });
});
