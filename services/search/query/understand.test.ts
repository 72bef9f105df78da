import { PGlite } from "@electric-sql/pglite";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MAX_QUERY_LENGTH, QuerySyntaxError, understandQuery } from "./understand.js";

describe("query syntax", () => {
  it("ANDs loose words and keeps what was typed", () => {
    const q = understandQuery("  Aspirin   Dosing ");
    expect(q.tsquery).toBe("(aspirin | acetylsalicylic <-> acid | asa) & dosing");
    expect(q.normalized).toBe("aspirin dosing");
    expect(q.words).toEqual(["aspirin", "dosing"]);
  });

  it("searches a quoted phrase as adjacent words and never expands inside it", () => {
    const q = understandQuery('"heart attack" outcomes');
    expect(q.tsquery).toBe("heart <-> attack & outcomes");
    expect(q.phrases).toEqual(["heart attack"]);
    expect(q.expansions).toEqual([]);
    expect(q.words).toEqual(["outcomes"]);
  });

  it("ORs the terms on either side of an upper-case OR into one group; lower-case or is a word", () => {
    expect(understandQuery("sepsis OR bacteremia children").tsquery).toBe(
      "(sepsis | blood <-> poisoning | septicaemia | septicemia | bacteremia) & children",
    );
    expect(understandQuery("zinc or copper").tsquery).toBe("zinc & or & copper");
    expect(understandQuery("zinc or copper").normalized).not.toBe(understandQuery("zinc OR copper").normalized);
  });

  it('excludes -word, -"phrase" and NOT word, without expanding them', () => {
    const q = understandQuery('statin -myopathy -"liver injury" NOT rhabdomyolysis');
    expect(q.tsquery).toBe(
      "(statin | statins | hmg <-> coa <-> reductase <-> inhibitor | cholesterol <-> lowering <-> drug) & !myopathy & !(liver <-> injury) & !rhabdomyolysis",
    );
    expect(q.excluded).toEqual(["myopathy", "liver injury", "rhabdomyolysis"]);
    expect(q.bm25Text).not.toMatch(/myopathy|liver|rhabdo/);
  });

  it("strips every tsquery metacharacter, leaving the words", () => {
    const q = understandQuery("cancer:* & !(lung) | 'x' \\ <-> <2> risk");
    expect(q.tsquery).toBe("cancer & lung & x & 2 & risk");
  });

  it("keeps control characters out of the normalized key (PostgreSQL text cannot hold NUL)", () => {
    expect(understandQuery("a\u0000b\u200bc\td").normalized).toBe("a b c d");
  });

  it("returns an empty tsquery when nothing searchable was typed", () => {
    for (const raw of ["", "   ", "&&|!", '""', "- -- ---"]) expect(understandQuery(raw).tsquery).toBe("");
  });

  it.each([
    ['"unclosed phrase', /never closes it/],
    ['lung "cancer', /never closes it/],
    ["-smoking", /only excludes \(-smoking\); add a term/],
    ['-"lung cancer" -smoking', /only excludes/],
    ["OR stroke", /OR needs a term on each side/],
    ["stroke OR", /OR needs a term on each side/],
    ["stroke OR OR mi", /OR needs a term on each side/],
    ["stroke OR -mi", /excluded term cannot be one side of OR/],
    ["stroke NOT", /ends with NOT/],
    ["x".repeat(65), /longer than 64 characters/],
    ["a ".repeat(MAX_QUERY_LENGTH), new RegExp(`at most ${MAX_QUERY_LENGTH}`)],
  ])("refuses %j with a sentence", (raw, message) => {
    expect(() => understandQuery(raw)).toThrowError(QuerySyntaxError);
    expect(() => understandQuery(raw)).toThrowError(message);
  });
});

describe("automatic term mapping", () => {
  const expandedTo = (raw: string) => understandQuery(raw).expansions.flatMap((e) => e.expandedTo);

  it("expands abbreviations both ways", () => {
    expect(expandedTo("MI")).toContain("myocardial infarction");
    expect(expandedTo("myocardial infarction")).toContain("MI");
    expect(expandedTo("htn")).toContain("hypertension");
    expect(expandedTo("hypertension")).toContain("HTN");
  });

  it("expands brand and generic drug names both ways", () => {
    expect(expandedTo("Glucophage")).toContain("metformin");
    expect(expandedTo("metformin")).toContain("Glucophage");
    expect(expandedTo("lipitor")).toContain("atorvastatin");
    expect(expandedTo("atorvastatin")).toContain("Lipitor");
  });

  it("expands lay and clinical terms both ways, multi-word alternatives as phrases", () => {
    const q = understandQuery("heart attack");
    expect(q.expansions).toEqual([
      {
        term: "heart attack",
        expandedTo: ["myocardial infarction", "myocardial infarct", "acute myocardial infarction", "MI", "AMI"],
      },
    ]);
    expect(q.tsquery).toBe(
      "(heart <-> attack | myocardial <-> infarction | myocardial <-> infarct | acute <-> myocardial <-> infarction | mi | ami)",
    );
    expect(expandedTo("high blood pressure")).toContain("hypertension");
    expect(expandedTo("hypertension")).toContain("high blood pressure");
  });

  it("matches the longest lexicon entry first", () => {
    const q = understandQuery("non small cell lung cancer");
    expect(q.expansions.map((e) => e.term)).toEqual(["non small cell lung cancer"]);
    expect(q.tsquery).toMatch(/^\(non <-> small <-> cell <-> lung <-> cancer \| .*nsclc\)$/);
  });

  it("matches a plain plural and a possessive", () => {
    expect(expandedTo("heart attacks")).toContain("myocardial infarction");
    expect(expandedTo("Alzheimer's disease")).toContain("Alzheimer disease");
    // The possessive "s" stays in the phrase: to_tsvector gives it a position.
    expect(understandQuery("crohn's disease").tsquery).toContain("crohn <-> s <-> disease");
  });

  it("searches one concept once when two of its names are typed", () => {
    expect(understandQuery("mi heart attack").tsquery.split(" & ")).toHaveLength(1);
  });

  it("never expands an ambiguous abbreviation", () => {
    for (const abbr of ["MS", "PE", "RA", "PD"]) {
      const q = understandQuery(abbr);
      expect(q.expansions).toEqual([]);
      expect(q.tsquery).toBe(abbr.toLowerCase());
    }
  });

  it("expands an abbreviation that is an English word only when typed in capitals", () => {
    expect(expandedTo("ALL relapse")).toContain("acute lymphoblastic leukemia");
    expect(expandedTo("all relapse")).toEqual([]);
    expect(understandQuery("ALL relapse").normalized).toBe("ALL relapse");
    // ...and never offers it as an alternative: the index cannot tell ALL from all.
    expect(understandQuery("acute lymphoblastic leukemia").tsquery).not.toMatch(/\ball\b/);
  });
});

/** A seeded generator, so a failure names a case that can be replayed. */
function random(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PIECES = [
  ..."&|!:*()<>'\\\"-_.,;/?[]{}@#$%^~`+=".split(""),
  " ",
  "  ",
  "\t",
  "OR",
  "AND",
  "NOT",
  "or",
  "<->",
  "<2>",
  ":*",
  ":AB",
  "'s",
  "mi",
  "MS",
  "ALL",
  "heart attack",
  "glucophage",
  "the",
  "a",
  "1.5",
  "covid-19",
  "é",
  "ß",
  "İ",
  "ﬁ",
  "²",
  "½",
  "α",
  "中文",
  "👍",
  "\u0301",
  "\u200b",
  "\u3000",
  "\u0000",
  "ǅ",
  "ᾼ",
];

function garbage(next: () => number): string {
  let out = "";
  const n = 1 + Math.floor(next() * 12);
  for (let i = 0; i < n; i++) {
    out +=
      next() < 0.8 ? PIECES[Math.floor(next() * PIECES.length)]! : String.fromCodePoint(Math.floor(next() * 0x2ffff));
  }
  return out;
}

function garbageQueries(count: number, seed: number): { raw: string; tsquery: string }[] {
  const next = random(seed);
  const out: { raw: string; tsquery: string }[] = [];
  let refused = 0;
  for (let i = 0; i < count; i++) {
    const raw = garbage(next);
    try {
      out.push({ raw, tsquery: understandQuery(raw).tsquery });
    } catch (err) {
      if (!(err instanceof QuerySyntaxError)) throw new Error(`${JSON.stringify(raw)} threw ${String(err)}`);
      expect(err.message).toMatch(/^[A-Z].*\.$/);
      refused++;
    }
  }
  expect(refused).toBeGreaterThan(0);
  expect(out.length).toBeGreaterThan(count / 2);
  return out;
}

interface Engine {
  name: string;
  query(sql: string, params: unknown[]): Promise<{ rows: Record<string, unknown>[] }>;
  close(): Promise<void>;
}

const engines: Engine[] = [];

beforeAll(async () => {
  const lite = await PGlite.create();
  engines.push({
    name: "PGlite",
    query: (sql, params) => lite.query<Record<string, unknown>>(sql, params),
    close: () => lite.close(),
  });
  // CI sets DATABASE_URL; a real server checks the same strings (it is what production runs).
  if (process.env.DATABASE_URL) {
    const client = new pg.Client({ connectionString: process.env.DATABASE_URL });
    await client.connect();
    engines.push({ name: "PostgreSQL", query: (sql, params) => client.query(sql, params), close: () => client.end() });
  }
});

afterAll(async () => {
  for (const e of engines) await e.close();
});

/** Every tsquery in one statement; on a failure, one at a time to name the culprit. */
async function acceptsAll(engine: Engine, cases: { raw: string; tsquery: string }[]): Promise<string[]> {
  const sql = "SELECT count(to_tsquery('english', q))::int AS n FROM unnest($1::text[]) AS q";
  try {
    await engine.query(sql, [cases.map((c) => c.tsquery)]);
    return [];
  } catch {
    const refused: string[] = [];
    for (const c of cases) {
      try {
        await engine.query("SELECT to_tsquery('english', $1)", [c.tsquery]);
      } catch (err) {
        refused.push(`${JSON.stringify(c.raw)} -> ${JSON.stringify(c.tsquery)}: ${(err as Error).message}`);
      }
    }
    return refused;
  }
}

describe("whatever is typed, the tsquery is valid", () => {
  it.each([1, 2, 3])(
    "2000 random strings (seed %i): refused with a sentence or accepted by every engine",
    async (seed) => {
      const cases = garbageQueries(2000, seed);
      expect(engines.length).toBeGreaterThan(0);
      for (const engine of engines) expect([engine.name, await acceptsAll(engine, cases)]).toEqual([engine.name, []]);
    },
  );

  it("the check finds a tsquery an engine refuses (the check itself works)", async () => {
    for (const engine of engines) {
      expect(
        await acceptsAll(engine, [
          { raw: "ok", tsquery: "ok" },
          { raw: "bad", tsquery: "a & (b |" },
        ]),
      ).toEqual([expect.stringMatching(/^"bad" -> "a & \(b \|": .*tsquery/)]);
    }
  });

  it("a query of the longest accepted length is accepted", async () => {
    const raw = Array.from({ length: MAX_QUERY_LENGTH / 4 }, (_, i) => (i % 7 === 0 ? "MI" : "abc")).join(" ");
    const cases = [{ raw, tsquery: understandQuery(raw.slice(0, MAX_QUERY_LENGTH)).tsquery }];
    for (const engine of engines) expect(await acceptsAll(engine, cases)).toEqual([]);
  });
});

describe("the tsquery finds what it means to", () => {
  const matches = async (engine: Engine, raw: string, text: string) => {
    const { rows } = await engine.query("SELECT to_tsvector('english', $2) @@ to_tsquery('english', $1) AS hit", [
      understandQuery(raw).tsquery,
      text,
    ]);
    return rows[0]!.hit as boolean;
  };

  it.each([
    ["MI", "Outcomes after acute myocardial infarction in older adults.", true],
    ["heart attack", "Troponin-guided triage of suspected MI.", true],
    ['"heart attack"', "Troponin-guided triage of suspected MI.", false],
    ["Lipitor muscle pain", "Atorvastatin and muscle pain in a randomized trial.", true],
    ["high blood pressure", "Salt reduction lowers blood pressure in hypertension.", true],
    ["Crohn's disease", "Biologics in Crohn's disease.", true],
    ["statin -myopathy", "Statins and myopathy.", false],
    ["statin -myopathy", "Statins and liver enzymes.", true],
    ["asthma OR COPD inhaler", "Inhaler technique in emphysema.", true],
    ["asthma inhaler", "Inhaler technique in emphysema.", false],
  ])("%j against %j: %s", async (raw, text, hit) => {
    for (const engine of engines) expect([engine.name, await matches(engine, raw, text)]).toEqual([engine.name, hit]);
  });
});
