import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { repoRoot } from "./support/embedded-mesh.js";

/**
 * The tree's shape, checked: new services are copied from the existing ones, so what a newcomer
 * copies must stay tidy. Type-only imports count, because a type cycle is still two modules that
 * cannot be understood one without the other.
 */

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) return sourceFiles(full);
    return name.endsWith(".ts") && !name.endsWith(".test.ts") ? [full] : [];
  });
}

const IMPORT = /(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+["'](\.{1,2}\/[^"']+)["']/g;

/** Relative imports of each file, resolved to the .ts file they name. */
function importGraph(files: string[]): Map<string, string[]> {
  const known = new Set(files);
  const graph = new Map<string, string[]>();
  for (const file of files) {
    const targets: string[] = [];
    for (const m of readFileSync(file, "utf8").matchAll(IMPORT)) {
      const target = path.resolve(path.dirname(file), m[1]!.replace(/\.js$/, ".ts"));
      if (known.has(target)) targets.push(target);
    }
    graph.set(file, targets);
  }
  return graph;
}

/** Strongly connected components with more than one file (Tarjan), or a file importing itself. */
function cycles(graph: Map<string, string[]>): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1 || graph.get(v)!.includes(v)) found.push(component.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return found;
}

const relative = (files: string[]) => files.map((f) => path.relative(repoRoot, f));
const services = readdirSync(path.join(repoRoot, "services")).filter((n) =>
  statSync(path.join(repoRoot, "services", n)).isDirectory(),
);

describe("the tree's shape", () => {
  it("finds a cycle when there is one (the check itself works)", () => {
    const graph = new Map([
      ["a", ["b"]],
      ["b", ["c"]],
      ["c", ["a"]],
      ["d", ["a"]],
    ]);
    expect(cycles(graph)).toEqual([["a", "b", "c"]]);
  });

  it.each(["services", "platform", "gateway"])("no modules under %s/ import each other in a loop", (dir) => {
    const graph = importGraph(sourceFiles(path.join(repoRoot, dir)));
    expect(graph.size).toBeGreaterThan(3);
    expect(cycles(graph).map(relative)).toEqual([]);
  });

  it.each(services)("services/%s has the shape every service shares", (name) => {
    const dir = path.join(repoRoot, "services", name);
    const missing = ["main.ts", "README.md", "migrations/index.ts"].filter((f) => {
      try {
        return !statSync(path.join(dir, f)).isFile();
      } catch {
        return true;
      }
    });
    expect(missing).toEqual([]);
  });

  it("no service imports another service's modules (they talk through RPCs and events)", () => {
    const crossings: string[] = [];
    for (const name of services) {
      for (const file of sourceFiles(path.join(repoRoot, "services", name))) {
        for (const m of readFileSync(file, "utf8").matchAll(IMPORT)) {
          const target = path.relative(repoRoot, path.resolve(path.dirname(file), m[1]!));
          const owner = /^services\/([^/]+)\//.exec(target)?.[1];
          if (owner && owner !== name) crossings.push(`${path.relative(repoRoot, file)} -> ${target}`);
        }
      }
    }
    expect(crossings).toEqual([]);
  });
});
