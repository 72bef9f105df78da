import { writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { QUERIES, type Need, type QueryKind, type QuerySpec } from "./queries.js";
import { DISTRACTORS, TOPICS, type Thing, type Topic } from "./topics.js";

/**
 * The judged set's generator: abstracts written from templates over TOPICS, with the wording varied
 * the way papers vary (clinical name, abbreviation, lay name; generic or brand), and graded
 * relevance for QUERIES computed from what each paper is about. Deterministic (seeded), so the
 * committed JSON is reproducible: `node --import tsx services/search/relevance/generate.ts`.
 */

export interface JudgedDocument {
  id: string;
  title: string;
  abstract: string;
  authors: string[];
  journal: string;
  publishedOn: string;
  specialty: string;
  documentType: string;
  keywords: string[];
  entities: string[];
  /** What the paper is about, in ids: the ground truth the grades are computed from. */
  facts: {
    condition?: string;
    mentions: string[];
    interventions: string[];
    classes: string[];
    comparators: string[];
    outcomes: string[];
  };
}

export interface JudgedQuery {
  id: string;
  text: string;
  kind: QueryKind;
  /** Document id → grade 1–3; documents not listed are 0. */
  judgments: Record<string, number>;
}

export interface JudgedSet {
  generator: string;
  documents: JudgedDocument[];
  queries: JudgedQuery[];
}

export const SEED = 20261202;
const DOCUMENTS_PER_TOPIC = 5;

function mulberry32(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Dice {
  constructor(readonly next: () => number) {}
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)]!;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  fixed(lo: number, hi: number, digits: number): string {
    return (lo + this.next() * (hi - lo)).toFixed(digits);
  }
}

const DESIGNS = [
  "randomized controlled trial",
  "cohort study",
  "meta-analysis",
  "case-control study",
  "cross-sectional study",
  "systematic review",
  "case report",
] as const;
type Design = (typeof DESIGNS)[number];

/** Outcomes that happen to a patient (a case-control study needs cases); the rest are measures. */
const EVENTS = new Set([
  "mortality",
  "reinfarction",
  "mace",
  "hospitalization",
  "stroke incidence",
  "stroke",
  "major bleeding",
  "recurrence",
  "hf hospitalization",
  "cardiovascular death",
  "hypoglycemia",
  "hip fracture",
  "relapse",
  "intracranial hemorrhage",
  "exacerbations",
  "kidney failure",
  "overdose",
  "icu admission",
  "neonatal mortality",
  "surgery",
  "long covid",
  "dialysis dependence",
]);

/** A case-control design only where the outcome is an event; a cohort otherwise. */
function fitDesign(design: Design, outcome: Thing): Design {
  return design === "case-control study" && !EVENTS.has(outcome.id) ? "cohort study" : design;
}

const SURNAMES =
  "Okafor Lindqvist Moreau Tanaka Haddad Kowalski Brennan Ferreira Nakamura Osei Petrov Castillo Andersen Mehta Schneider Oyelaran Dubois Yamamoto Rossi Novak Kariuki Larsen Ibrahim Fischer Alvarez Chen Nguyen Kaur Walsh Mbeki Johansson Costa Ahmed Weber Sato Lopez Murphy Singh Hughes Bakker Morales Kim Eriksen Farouk Romano Ivanova Adeyemi Park Horvat Silva".split(
    " ",
  );
const INITIALS = "ABCDEFGHJKLMNPRSTW".split("");

const JOURNAL_FORMS = [
  (s: string) => `Journal of Clinical ${s}`,
  (s: string) => `${s} Evidence Reports`,
  (s: string) => `International Archives of ${s}`,
  (s: string) => `${s} Practice and Research`,
  (s: string) => `Annals of Applied ${s}`,
];

const title = (s: string) => s.replace(/(^|\s)([a-z])/g, (_m, a: string, b: string) => a + b.toUpperCase());
const cap = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);

/** How one paper names one thing: its first mention and the mentions after. */
interface Naming {
  first: string;
  later: string;
}

function nameCondition(c: Thing, style: number, d: Dice): Naming {
  // style 0: the clinical name; 1: the abbreviation (introduced once) or a synonym; 2: another name only.
  const others = c.names.slice(1);
  if (style === 1 && c.abbr) return { first: `${c.names[0]} (${c.abbr})`, later: c.abbr };
  if (style === 0 || others.length === 0) return { first: c.names[0]!, later: c.names[0]! };
  const n = d.pick(others);
  return { first: n, later: n };
}

function nameIntervention(i: Thing, d: Dice): Naming {
  const brand = i.brands?.length ? d.pick(i.brands) : undefined;
  const r = d.next();
  if (brand && r < 0.2) return { first: brand, later: brand };
  if (brand && r < 0.45) return { first: `${i.names[0]} (${brand})`, later: i.names[0]! };
  const n = r < 0.75 ? i.names[0]! : d.pick(i.names);
  return { first: n, later: n };
}

function conditionNamed(id: string): string {
  const t = TOPICS.find((t) => t.condition.id === id);
  return t ? t.condition.names[0]! : id;
}

interface Plan {
  topic: Topic;
  design: Design;
  intervention: Thing;
  outcome: Thing;
  style: number;
}

function writeAbstract(
  p: Plan,
  d: Dice,
): { title: string; abstract: string; mentions: string[]; comparators: string[] } {
  const C = nameCondition(p.topic.condition, p.style, d);
  const I = nameIntervention(p.intervention, d);
  const others = p.topic.interventions.filter((x) => x.id !== p.intervention.id);
  const comparatorThing = others.length && d.chance(0.4) ? d.pick(others) : undefined;
  const K = comparatorThing
    ? nameIntervention(comparatorThing, d).first
    : d.pick(p.intervention.brands ? ["placebo", "placebo", "usual care"] : ["usual care", "standard care"]);
  const O = d.pick(p.outcome.names);
  const event = EVENTS.has(p.outcome.id);
  const P = d.pick(p.topic.populations);
  const related = p.topic.related.length && d.chance(0.6) ? d.pick(p.topic.related) : undefined;
  const R = related ? conditionNamed(related) : undefined;
  const cls = p.intervention.cls ?? "this";
  const n = d.int(80, 24000);
  const years = d.int(1, 6);
  const y2 = d.int(2015, 2025);
  const hr = d.fixed(0.55, 1.1, 2);
  const lo = (Number(hr) * Number(d.fixed(0.7, 0.92, 2))).toFixed(2);
  const hi = (Number(hr) * Number(d.fixed(1.08, 1.35, 2))).toFixed(2);
  const significant = Number(hi) < 1;
  const pv = significant
    ? d.pick(["0.001", "0.003", "0.01", "0.02", "<0.001"])
    : d.pick(["0.21", "0.34", "0.48", "0.62"]);
  const a = d.fixed(4, 30, 1);
  const b = (Number(a) * Number(hr)).toFixed(1);

  const titles: Record<Design, string[]> = {
    "randomized controlled trial": [
      `${cap(I.first)} versus ${K} in ${C.later}: a randomised trial`,
      `Effect of ${I.later} on ${O} in ${P} with ${C.later}`,
      `${cap(I.later)} for ${C.later} (a multicentre randomized controlled trial)`,
    ],
    "cohort study": [
      `${cap(I.later)} and ${O} in ${C.later}: a population-based cohort study`,
      `Real-world outcomes of ${I.later} among ${P} with ${C.later}`,
    ],
    "meta-analysis": [
      `${cap(I.later)} for ${C.later}: a systematic review and meta-analysis`,
      `${cap(O)} with ${I.later} in ${C.later}: meta-analysis of randomised trials`,
    ],
    "case-control study": [`${cap(I.later)} exposure and ${O} in ${C.later}: a nested case-control study`],
    "cross-sectional study": [
      `Use of ${I.later} and ${O} among ${P} with ${C.later}: a cross-sectional survey`,
      `Patterns of ${cls} treatment in ${C.later}`,
    ],
    "systematic review": [
      `${cap(I.later)} in ${C.later}: a systematic review`,
      `What is known about ${I.later} in ${C.later}? A review`,
    ],
    "case report": [
      `${cap(C.later)} and ${I.later}: a case report`,
      `An unusual course of ${C.later} after ${I.later}`,
    ],
  };

  const background = [
    `${cap(C.first)} remains a major cause of morbidity and death, and ${P} carry a large share of the burden.`,
    `Evidence on ${I.first} for ${P} with ${C.first} is limited.`,
    `Although ${cls} treatment is widely used in ${C.first}, its effect on ${O} remains uncertain.`,
    `Guidelines recommend ${I.first} for many people with ${C.first}, but uptake in routine practice varies.`,
    `Whether the benefits of ${I.first} seen in trials extend to ${P} with ${C.first} is unclear.`,
  ];
  const objective = [
    `We aimed to assess whether ${I.later} ${event ? "reduces" : "improves"} ${O} in ${P} with ${C.later}.`,
    `This study examined the association between ${I.later} and ${O} among ${P}.`,
    `Our objective was to compare ${I.later} with ${K} with respect to ${O}.`,
  ];
  const k = d.int(5, 31);
  const methods: Record<Design, string[]> = {
    "randomized controlled trial": [
      `In this multicentre, double-blind trial, ${n} ${P} with ${C.later} were randomly assigned to ${I.later} or ${K} and followed for a median of ${years} years.`,
      `The primary outcome was ${O}; analyses followed the intention-to-treat principle.`,
    ],
    "cohort study": [
      `We used linked health records of ${n} ${P} with ${C.later} treated between ${y2 - years - 4} and ${y2}.`,
      `Associations between ${I.later} and ${O} were estimated with Cox models adjusted for age, sex, deprivation and comorbidity.`,
    ],
    "meta-analysis": [
      `We searched MEDLINE, Embase and trial registries to ${y2} for randomised trials comparing ${I.later} with ${K} in ${C.later}.`,
      `${k} trials with ${n} participants were pooled using random-effects models, and certainty was rated with GRADE.`,
    ],
    "case-control study": [
      `Within a primary care database, ${d.int(200, 3000)} ${P} with ${C.later} who experienced ${O} were matched to ${d.int(1000, 12000)} controls by age, sex and calendar time.`,
      `Exposure to ${I.later} was ascertained from prescription and procedure records in the preceding year.`,
    ],
    "cross-sectional study": [
      `A survey of ${n} ${P} with ${C.later} in ${d.int(12, 140)} practices recorded current treatment, including ${I.later}, and ${O}.`,
      `Prevalence ratios were estimated with log-binomial regression.`,
    ],
    "systematic review": [
      `We systematically reviewed ${k} studies of ${I.later} in ${C.later} published to ${y2}, appraising risk of bias with standard tools.`,
      `Owing to heterogeneity in designs and outcome definitions, findings were synthesised narratively.`,
    ],
    "case report": [
      `A ${d.int(19, 88)}-year-old ${d.pick(["man", "woman"])} with ${C.later} was started on ${I.later}.`,
      `Over the following weeks the course was monitored with particular attention to ${O}.`,
    ],
  };
  const results: Record<Design, string[]> = {
    "randomized controlled trial": [
      significant
        ? `${cap(O)} occurred in ${b}% of the ${I.later} group and ${a}% of the ${K} group (hazard ratio ${hr}; 95% CI ${lo} to ${hi}; P=${pv}).`
        : `${cap(O)} did not differ between groups (${b}% versus ${a}%; hazard ratio ${hr}; 95% CI ${lo} to ${hi}; P=${pv}).`,
      `Serious adverse events were ${d.pick(["similar in both arms", "slightly more frequent with active treatment", "uncommon"])}.`,
    ],
    "cohort study": [
      significant
        ? `${cap(I.later)} was associated with a lower risk of ${O} (adjusted hazard ratio ${hr}; 95% CI ${lo} to ${hi}).`
        : `${cap(I.later)} was not associated with ${O} after adjustment (hazard ratio ${hr}; 95% CI ${lo} to ${hi}).`,
      `Results were consistent in sensitivity analyses using propensity score matching.`,
    ],
    "meta-analysis": [
      `Compared with ${K}, ${I.later} ${significant ? "reduced" : "did not clearly change"} ${O} (risk ratio ${hr}; 95% CI ${lo} to ${hi}; I² = ${d.int(0, 70)}%).`,
      `Certainty of evidence was ${d.pick(["moderate", "low", "high"])}.`,
    ],
    "case-control study": [
      `Current use of ${I.later} was ${significant ? "associated with lower" : "not associated with"} odds of ${O} (odds ratio ${hr}; 95% CI ${lo} to ${hi}).`,
      `A dose-response relation was ${significant ? "observed" : "not observed"}.`,
    ],
    "cross-sectional study": [
      `${a}% of respondents reported current ${I.later}; ${O} was ${significant ? "more favourable" : "similar"} among users (prevalence ratio ${hr}; 95% CI ${lo} to ${hi}).`,
      `Use was lower among ${P} living in deprived areas.`,
    ],
    "systematic review": [
      `Most studies reported ${significant ? "improvement" : "no consistent change"} in ${O} with ${I.later}, but follow-up was short and samples small.`,
      `Few studies enrolled ${P}.`,
    ],
    "case report": [
      `${cap(O)} evolved ${d.pick(["favourably", "unexpectedly", "slowly"])}, and treatment was ${d.pick(["continued", "adjusted", "withdrawn"])} after review.`,
      `Alternative explanations were considered and excluded.`,
    ],
  };
  const conclusion = [
    `In ${P} with ${C.later}, ${I.later} ${significant ? (event ? "reduced" : "improved") : event ? "did not reduce" : "did not improve"} ${O}.`,
    `These findings ${significant ? "support" : "do not support"} wider use of ${I.later} in ${C.later}.`,
    `${cap(I.later)} ${significant ? "is a reasonable option" : "should not be routinely recommended"} for ${C.later} on the basis of ${O}.`,
  ];
  const extras = [
    R
      ? `Many participants also had ${R}, which was accounted for in subgroup analyses.`
      : `Subgroups defined by age and sex showed consistent effects.`,
    `Limitations include residual confounding and incomplete data on adherence.`,
    `Further studies with longer follow-up and more diverse populations are needed.`,
    `Cost implications for health systems were not assessed.`,
    `Outcome assessors were unaware of treatment allocation where this was feasible.`,
    `Patients and clinicians contributed to the choice of outcomes and the interpretation of results.`,
  ];

  const parts = [
    d.pick(background),
    d.pick(objective),
    ...methods[p.design],
    ...results[p.design],
    ...(R && d.chance(0.7) ? [extras[0]!] : []),
    d.pick(conclusion),
  ];
  let abstract = parts.join(" ");
  for (const extra of extras.slice(1)) {
    if (wordCount(abstract) >= 135) break;
    abstract = `${abstract} ${extra}`;
  }
  const mentions = R && abstract.includes(R) ? [related!] : [];
  const comparators = comparatorThing && abstract.includes(K) ? [comparatorThing.id] : [];
  return { title: d.pick(titles[p.design]), abstract, mentions, comparators };
}

const wordCount = (s: string) => s.split(/\s+/).filter(Boolean).length;

function authors(d: Dice): string[] {
  const count = d.int(1, 8);
  const out = new Set<string>();
  while (out.size < count) out.add(`${d.pick(SURNAMES)} ${d.pick(INITIALS)}${d.chance(0.5) ? d.pick(INITIALS) : ""}`);
  return [...out];
}

function journal(specialty: string, d: Dice): string {
  return d.pick(JOURNAL_FORMS)(title(specialty));
}

function date(d: Dice): string {
  const y = d.int(2012, 2026);
  const m = d.int(1, y === 2026 ? 6 : 12);
  return `${y}-${String(m).padStart(2, "0")}-${String(d.int(1, 28)).padStart(2, "0")}`;
}

/** The plans pinned first, one per query, so every query has at least one fully relevant paper. */
function pinnedPlan(q: QuerySpec, d: Dice): Plan {
  const topic = TOPICS.find(
    (t) =>
      (!q.need.condition || q.need.condition.includes(t.condition.id)) &&
      (!q.need.intervention || t.interventions.some((i) => matchesIntervention(q.need, i))) &&
      (!q.need.outcome || t.outcomes.some((o) => q.need.outcome!.includes(o.id))),
  );
  if (!topic) throw new Error(`no topic can satisfy query ${q.id} (${q.text})`);
  const interventions = q.need.intervention
    ? topic.interventions.filter((i) => matchesIntervention(q.need, i))
    : topic.interventions;
  const outcomes = q.need.outcome ? topic.outcomes.filter((o) => q.need.outcome!.includes(o.id)) : topic.outcomes;
  const outcome = d.pick(outcomes);
  return {
    topic,
    design: fitDesign(d.pick(DESIGNS.slice(0, 4)), outcome),
    intervention: d.pick(interventions),
    outcome,
    style: d.int(0, 2),
  };
}

function matchesIntervention(need: Need, i: Thing): boolean {
  return !!need.intervention && (need.intervention.includes(i.id) || (!!i.cls && need.intervention.includes(i.cls)));
}

/** The class of each intervention id, for "same kind of treatment" judgments. */
const CLASS_OF = new Map(TOPICS.flatMap((t) => t.interventions.map((i) => [i.id, i.cls] as const)));

/**
 * 3: about the condition and everything else asked; 2: about the condition, with the treatment asked
 * for only as the comparator or a sibling of the same class; 1: on the condition but not the rest, or
 * the whole ask with the condition only on the side.
 */
export function grade(need: Need, f: JudgedDocument["facts"]): number {
  const asks: ("full" | "part" | "none")[] = [];
  if (need.intervention) {
    const full = need.intervention.some((x) => f.interventions.includes(x) || f.classes.includes(x));
    const part = need.intervention.some(
      (x) => f.comparators.includes(x) || (!!CLASS_OF.get(x) && f.classes.includes(CLASS_OF.get(x)!)),
    );
    asks.push(full ? "full" : part ? "part" : "none");
  }
  if (need.outcome) asks.push(need.outcome.some((x) => f.outcomes.includes(x)) ? "full" : "none");
  const all = asks.every((a) => a === "full");
  const some = asks.some((a) => a !== "none");
  if (!need.condition) return asks.length === 0 ? 0 : all ? 3 : some ? (asks.includes("full") ? 2 : 1) : 0;
  const primary = !!f.condition && need.condition.includes(f.condition);
  const side = need.condition.some((c) => f.mentions.includes(c));
  if (primary) return all ? 3 : some ? 2 : 1;
  if (side && all && asks.length > 0) return 1;
  return 0;
}

export function buildJudgedSet(): JudgedSet {
  const d = new Dice(mulberry32(SEED));
  const plans: Plan[] = QUERIES.map((q) => pinnedPlan(q, d));
  for (let round = 0; round < DOCUMENTS_PER_TOPIC - 1; round++) {
    for (const topic of TOPICS) {
      const intervention = topic.interventions[(round + d.int(0, 5)) % topic.interventions.length]!;
      const outcome = d.pick(topic.outcomes);
      plans.push({
        topic,
        design: fitDesign(DESIGNS[(round * 3 + TOPICS.indexOf(topic)) % DESIGNS.length]!, outcome),
        intervention,
        outcome,
        style: (round + TOPICS.indexOf(topic)) % 3,
      });
    }
  }

  const documents: JudgedDocument[] = [];
  const id = () => `d${String(documents.length + 1).padStart(3, "0")}`;
  for (const p of plans) {
    const written = writeAbstract(p, d);
    const classes = p.intervention.cls ? [p.intervention.cls] : [];
    documents.push({
      id: id(),
      title: written.title,
      abstract: written.abstract,
      authors: authors(d),
      journal: journal(p.topic.specialty, d),
      publishedOn: date(d),
      specialty: p.topic.specialty,
      documentType: p.design,
      keywords: [p.topic.condition.names[0]!, p.intervention.names[0]!, ...classes, p.outcome.names[0]!],
      entities: [p.topic.condition.id, p.intervention.id, ...written.mentions],
      facts: {
        condition: p.topic.condition.id,
        mentions: written.mentions,
        interventions: [p.intervention.id],
        classes,
        comparators: written.comparators,
        outcomes: [p.outcome.id],
      },
    });
  }
  for (const x of DISTRACTORS) {
    const filler = [
      "Data were collected prospectively and analysed according to a prespecified plan.",
      "Missing data were handled with multiple imputation.",
      "The study was approved by the relevant ethics committee and participants gave informed consent.",
      "Findings should be confirmed in other settings before changes to practice are made.",
      "Implications for training, service design and future research are discussed.",
      "Sensitivity analyses restricted to complete cases gave similar estimates.",
      "Participants and staff described the changes as acceptable in qualitative interviews.",
      "Costs were modest relative to the resources already committed to routine care.",
      "Generalisability is limited by the single-country setting and the period of observation.",
    ];
    let abstract = x.sentences.join(" ");
    for (const f of filler) if (wordCount(abstract) < 125) abstract = `${abstract} ${f}`;
    documents.push({
      id: id(),
      title: x.title,
      abstract,
      authors: authors(d),
      journal: journal(x.specialty, d),
      publishedOn: date(d),
      specialty: x.specialty,
      documentType: d.pick(["cohort study", "cross-sectional study", "randomized controlled trial"]),
      keywords: [],
      entities: [],
      facts: { mentions: [], interventions: [], classes: [], comparators: [], outcomes: [] },
    });
  }

  const queries: JudgedQuery[] = QUERIES.map((q) => {
    const judgments: Record<string, number> = {};
    for (const doc of documents) {
      const g = grade(q.need, doc.facts);
      if (g > 0) judgments[doc.id] = g;
    }
    return { id: q.id, text: q.text, kind: q.kind, judgments };
  });
  return { generator: `services/search/relevance/generate.ts seed ${SEED}`, documents, queries };
}

export const JUDGED_SET_PATH = path.join(path.dirname(fileURLToPath(import.meta.url)), "judged-set.json");

/** As the repository's prettier would format it, so `prettier --check .` passes on the committed file. */
export async function serialize(set: JudgedSet): Promise<string> {
  const prettier = await import("prettier");
  const options = (await prettier.resolveConfig(JUDGED_SET_PATH)) ?? {};
  return prettier.format(JSON.stringify(set), { ...options, parser: "json" });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const set = buildJudgedSet();
  writeFileSync(JUDGED_SET_PATH, await serialize(set));
  const words = set.documents.map((doc) => wordCount(doc.abstract));
  console.log(
    `${set.documents.length} documents (abstracts ${Math.min(...words)}–${Math.max(...words)} words), ${set.queries.length} queries -> ${JUDGED_SET_PATH}`,
  );
}
