import Handlebars from "handlebars";
import type { FieldViolation } from "../../platform/grpc/errors.js";
import { REQUIRED, VARIABLES, type TemplateText, type TypeName } from "./catalog.js";

// Handlebars without helpers or partials of ours: a template is text with {{variables}}. An
// isolated environment, so nothing registered elsewhere in the process leaks into rendering.
const hbs = Handlebars.create();

type Node = hbs.AST.Node & Record<string, unknown>;

/** Every variable a template refers to, and whether it writes any unescaped ({{{x}}}). */
function references(source: string): { names: Set<string>; raw: string[] } {
  const ast = hbs.parse(source);
  const names = new Set<string>();
  const raw: string[] = [];
  const visit = (n: unknown): void => {
    if (!n || typeof n !== "object") return;
    if (Array.isArray(n)) return n.forEach(visit);
    const node = n as Node;
    if (node.type === "PathExpression") {
      const p = node as unknown as hbs.AST.PathExpression;
      if (p.original !== "this" && p.parts.length > 0) names.add(p.parts.join("."));
      return;
    }
    if (node.type === "MustacheStatement" && (node as unknown as hbs.AST.MustacheStatement).escaped === false) {
      const path = (node as unknown as hbs.AST.MustacheStatement).path as hbs.AST.PathExpression;
      raw.push(path.original ?? "?");
    }
    for (const [k, v] of Object.entries(node)) if (k !== "loc") visit(v);
  };
  visit(ast);
  return { names, raw };
}

/**
 * Checks a template before it is saved: it must parse, write nothing unescaped, use only variables
 * it declares, declare only variables its type provides, and use the ones the type requires.
 * Answers one violation per problem, naming the field and the variable.
 */
export function checkTemplate(type: TypeName, t: TemplateText, declared: string[]): FieldViolation[] {
  const problems: FieldViolation[] = [];
  const provided = VARIABLES[type];
  for (const v of declared)
    if (!(v in provided))
      problems.push({
        field: "template.variables",
        description: `declares unknown variable "${v}"; ${type} provides ${Object.keys(provided).join(", ")}`,
      });
  const used = new Set<string>();
  for (const [field, source] of [
    ["template.subject", t.subject],
    ["template.html_body", t.html],
    ["template.text_body", t.text],
  ] as const) {
    let refs;
    try {
      refs = references(source);
    } catch (err) {
      problems.push({ field, description: `is not a valid template: ${firstLine((err as Error).message)}` });
      continue;
    }
    for (const r of refs.raw) problems.push({ field, description: `writes "${r}" unescaped ({{{…}}}); use {{${r}}}` });
    for (const name of refs.names) {
      used.add(name);
      if (!declared.includes(name))
        problems.push({ field, description: `uses variable "${name}", which is not in template.variables` });
    }
  }
  for (const v of REQUIRED[type] ?? [])
    if (!used.has(v)) problems.push({ field: "template.variables", description: `is missing variable "${v}"` });
  return problems;
}

const firstLine = (s: string) => s.split("\n").find((l) => l.trim()) ?? s;

export class MissingVariableError extends Error {}

interface Compiled {
  subject: HandlebarsTemplateDelegate;
  html: HandlebarsTemplateDelegate;
  text: HandlebarsTemplateDelegate;
}

const cache = new Map<string, Compiled>();

/**
 * Renders a template. Strict: a variable without a value throws (MissingVariableError, naming it)
 * rather than rendering blank. HTML escaping is Handlebars' default for {{x}}; the subject and the
 * text part are not HTML, so they are compiled without it.
 */
export function render(key: string, t: TemplateText, values: Record<string, string>): TemplateText {
  let c = cache.get(key);
  if (!c) {
    c = {
      subject: hbs.compile(t.subject, { strict: true, noEscape: true }),
      html: hbs.compile(t.html, { strict: true }),
      text: hbs.compile(t.text, { strict: true, noEscape: true }),
    };
    if (cache.size > 1000) cache.clear();
    cache.set(key, c);
  }
  try {
    return {
      subject: c
        .subject(values)
        .replace(/[\r\n]+/g, " ")
        .trim(),
      html: c.html(values),
      text: c.text(values),
    };
  } catch (err) {
    const m = /"([^"]+)" not defined/.exec((err as Error).message);
    throw new MissingVariableError(m ? `variable "${m[1]}" has no value` : (err as Error).message);
  }
}
