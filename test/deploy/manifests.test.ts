/**
 * Static checks of the deployment artifacts. There is no container engine or cluster in CI, so
 * these catch what a reader would otherwise find at `docker compose up` or `kubectl apply` time:
 * dangling references, configuration the processes would reject, images missing runtime files.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { builtinModules } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parse, parseAllDocuments } from "yaml";
import { describe, expect, it } from "vitest";
import { loadConfig, type Spec } from "../../platform/config/env.js";
import { components, type Component } from "../../platform/config/components.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const read = (rel: string) => readFileSync(path.join(root, rel), "utf8");

type Obj = Record<string, any>;

/** The config spec of a process entry, so manifests are checked by the code that will read them. */
async function specFor(entry: string): Promise<Spec | undefined> {
  const mod = (await import(path.join(root, entry))) as { configSpec?: Spec };
  return mod.configSpec;
}

/** Variables the processes do not declare but the runtime legitimately reads. */
const runtimeVariables = new Set(["NODE_OPTIONS", "NODE_ENV"]);

async function checkProcessEnv(entry: string, vars: Record<string, string>): Promise<string[]> {
  const spec = await specFor(entry);
  if (!spec) return [`${entry} exports no configSpec`];
  const problems = Object.keys(vars)
    .filter((k) => !(k in spec) && !runtimeVariables.has(k))
    .map((k) => `${entry}: ${k} is set but the process does not read it`);
  try {
    loadConfig(spec, vars);
  } catch (err) {
    problems.push(`${entry}: ${(err as Error).message}`);
  }
  return problems;
}

/**
 * The mesh's own processes, whose ports and targets platform/config/components.ts declares. The
 * manifests spell those numbers out (YAML has no imports); these checks hold them to the one
 * declaration. The embedded Postgres is absent on purpose: deployments use a real one.
 */
const meshProcesses: Record<string, Component> = {
  gateway: components.gateway,
  documents: components.documents,
  identity: components.identity,
  processing: components.processing,
  search: components.search,
  devices: components.devices,
  notifications: components.notifications,
  smtp: components.smtp,
};

/** Ports, targets and brokers in one process's environment that differ from the declaration. */
function declaredPortProblems(where: string, vars: Record<string, string>): string[] {
  const problems: string[] = [];
  for (const c of Object.values(meshProcesses)) {
    const port = vars[c.portVariable];
    if (port !== undefined && port !== String(c.port))
      problems.push(`${where}: ${c.portVariable}=${port}, but ${c.name} listens on ${c.port}`);
    const target = c.targetVariable && vars[c.targetVariable];
    if (target && target !== `dns:///${c.name}:${c.port}`)
      problems.push(`${where}: ${c.targetVariable}=${target}, but ${c.name} listens on ${c.port}`);
  }
  for (const broker of (vars.KAFKA_BROKERS ?? "").split(",").filter(Boolean)) {
    if (!broker.endsWith(`:${components.kafka.port}`))
      problems.push(`${where}: KAFKA_BROKERS has ${broker}, not Kafka's port ${components.kafka.port}`);
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------
// docker compose

/** ${NAME:-default} and ${NAME} as compose resolves them with an empty environment. */
function interpolate(value: unknown): string {
  return String(value).replace(
    /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}/g,
    (_, _n, def: string | undefined) => def ?? "",
  );
}

describe("docker-compose.yml", () => {
  const compose = parse(read("docker-compose.yml"), { merge: true }) as Obj;
  const services = compose.services as Record<string, Obj>;
  const envOf = (name: string) =>
    Object.fromEntries(Object.entries(services[name]!.environment ?? {}).map(([k, v]) => [k, interpolate(v)]));

  it("only depends on services that exist, and waits for health only where a healthcheck is defined", () => {
    const problems: string[] = [];
    for (const [name, svc] of Object.entries(services)) {
      for (const [dep, cond] of Object.entries((svc.depends_on ?? {}) as Record<string, Obj>)) {
        if (!services[dep]) problems.push(`${name} depends on unknown ${dep}`);
        else if (cond.condition === "service_healthy" && !services[dep].healthcheck)
          problems.push(`${name} waits for ${dep} to be healthy, but ${dep} has no healthcheck`);
      }
    }
    expect(problems).toEqual([]);
  });

  it("starts documents after a healthy Postgres, and the gateway after a healthy documents", () => {
    expect(services.documents?.depends_on?.postgres?.condition).toBe("service_healthy");
    expect(services.gateway?.depends_on?.documents?.condition).toBe("service_healthy");
  });

  it("mounts files that exist", () => {
    const missing: string[] = [];
    for (const [name, svc] of Object.entries(services)) {
      for (const v of (svc.volumes ?? []) as string[]) {
        const source = v.split(":")[0]!;
        if (source.startsWith(".") && !existsSync(path.join(root, source))) missing.push(`${name}: ${source}`);
      }
    }
    expect(missing).toEqual([]);
  });

  it("gives each medmesh process configuration it accepts, bound to all interfaces", async () => {
    const problems: string[] = [];
    for (const [name, svc] of Object.entries(services)) {
      if (!svc.build) continue;
      const entry = (svc.command as string[])[0]!;
      expect(existsSync(path.join(root, entry)), `${name} entry ${entry}`).toBe(true);
      problems.push(...(await checkProcessEnv(entry, envOf(name))));
      expect(svc.healthcheck, `${name} healthcheck`).toBeDefined();
    }
    expect(problems).toEqual([]);
    expect(envOf("documents").DOCUMENTS_HOST).toBe("0.0.0.0");
    expect(envOf("gateway").GATEWAY_HOST).toBe("0.0.0.0");
  });

  it("points the gateway and the health probe at the port documents listens on", () => {
    const port = envOf("documents").DOCUMENTS_PORT;
    expect(envOf("gateway").DOCUMENTS_TARGET).toBe(`dns:///documents:${port}`);
    const test = services.documents!.healthcheck.test as string[];
    expect(test.slice(0, 4)).toEqual(["CMD", "node", "--import", "tsx"]);
    expect(existsSync(path.join(root, test[4]!))).toBe(true);
    expect(test[5]).toBe(`127.0.0.1:${port}`);
    expect((services.gateway!.healthcheck.test as string[]).join(" ")).toContain(
      `:${envOf("gateway").GATEWAY_PORT}/readyz`,
    );
  });

  it("uses the ports and targets platform/config/components.ts declares", () => {
    const problems: string[] = [];
    for (const [name, svc] of Object.entries(services)) {
      if (!svc.build) continue;
      problems.push(...declaredPortProblems(`compose ${name}`, envOf(name)));
      const c = meshProcesses[name];
      if (!c) {
        problems.push(`compose ${name}: not a component platform/config/components.ts declares`);
        continue;
      }
      expect(envOf(name)[c.portVariable], `${name} ${c.portVariable}`).toBe(String(c.port));
      const published = ((svc.ports ?? []) as string[]).map((p) => Number(String(p).split(":").at(-1)));
      // Processing publishes nothing (it scales); whatever is published is the declared port.
      for (const port of published) if (port !== c.port) problems.push(`compose ${name}: publishes ${port}`);
      const probe = (svc.healthcheck.test as string[]).join(" ");
      if (!probe.includes(`127.0.0.1:${c.port}`)) problems.push(`compose ${name}: healthcheck is not on ${c.port}`);
    }
    expect(problems).toEqual([]);
  });

  it("gives documents its own database and role, created by the init script", () => {
    const url = new URL(envOf("documents").DATABASE_URL!);
    const databases = String(services.postgres!.environment.MEDMESH_DATABASES).split(/\s+/);
    expect(url.hostname).toBe("postgres");
    expect(databases).toContain(url.pathname.slice(1));
    expect(url.username).toBe(url.pathname.slice(1));
    expect(decodeURIComponent(url.password)).toBe(envOf("postgres").DOCUMENTS_DB_PASSWORD);
  });

  it("lets a process finish its drain before Docker kills it", () => {
    for (const name of ["documents", "gateway"]) {
      const grace = Number.parseInt(String(services[name]!.stop_grace_period), 10) * 1000;
      expect(grace, name).toBeGreaterThan(Number(envOf(name).SHUTDOWN_GRACE_MS));
    }
  });

  it("sends spans to a collector whose pipeline is complete and exports to Jaeger", () => {
    const collector = parse(read("deploy/compose/otel-collector.yaml")) as Obj;
    const otlp = new URL(envOf("documents").OTEL_EXPORTER_OTLP_ENDPOINT!);
    expect(services[otlp.hostname], "collector service").toBeDefined();
    expect(collector.receivers.otlp.protocols.http.endpoint).toBe(`0.0.0.0:${otlp.port}`);
    for (const [, pipeline] of Object.entries(collector.service.pipelines as Record<string, Obj>)) {
      for (const kind of ["receivers", "processors", "exporters"] as const) {
        for (const id of pipeline[kind] ?? []) expect(collector[kind]?.[id], `${kind} ${id}`).toBeDefined();
      }
    }
    const jaeger = collector.exporters["otlp/jaeger"].endpoint as string;
    expect(services[jaeger.split(":")[0]!], "jaeger service").toBeDefined();
  });
});

// ---------------------------------------------------------------------------------------------
// image

/** .dockerignore semantics: the last matching pattern wins; a pattern matching a folder covers its files. */
function dockerContext(patterns: string[]): (file: string) => boolean {
  const rules = patterns.map((line) => {
    const negated = line.startsWith("!");
    const glob = (negated ? line.slice(1) : line).replace(/^\/+|\/+$/g, "");
    const source = glob
      .split(/(\*\*\/|\*\*|\*|\?)/)
      .map(
        (part) =>
          ({ "**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]" })[part] ??
          part.replace(/[.+^${}()|[\]\\]/g, "\\$&"),
      )
      .join("");
    return { negated, re: new RegExp(`^${source}$`) };
  });
  return (file) => {
    const prefixes = file.split("/").map((_, i, parts) => parts.slice(0, i + 1).join("/"));
    let included = true;
    for (const r of rules) if (prefixes.some((p) => r.re.test(p))) included = r.negated;
    return included;
  };
}

const importPattern =
  /\b(?:import|export)\s+(type\s+)?[^'";]*?\bfrom\s*["']([^"']+)["']|\bimport\s*\(\s*["']([^"']+)["']\s*\)|\bimport\s+["']([^"']+)["']/g;

/** Every file and package reachable by imports from the entries, as the runtime would load them. */
function reachable(entries: string[]): { files: Set<string>; packages: Set<string> } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const queue = [...entries];
  while (queue.length) {
    const file = queue.pop()!;
    if (files.has(file)) continue;
    files.add(file);
    for (const m of read(file).matchAll(importPattern)) {
      if (m[1]) continue;
      const spec = m[2] ?? m[3] ?? m[4]!;
      if (spec.startsWith(".")) {
        const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(file), spec));
        const ts = resolved.replace(/\.js$/, ".ts");
        queue.push(existsSync(path.join(root, ts)) ? ts : resolved);
      } else if (!spec.startsWith("node:") && !builtinModules.includes(spec)) {
        const parts = spec.split("/");
        packages.add(spec.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0]!);
      }
    }
  }
  return { files, packages };
}

describe("Dockerfile and .dockerignore", () => {
  const dockerfile = read("Dockerfile");
  const ignore = read(".dockerignore")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));
  const inContext = dockerContext(ignore);
  const serviceEntries = readdirSync(path.join(root, "services"))
    .map((d) => `services/${d}/main.ts`)
    .filter((f) => existsSync(path.join(root, f)));
  const migrations = readdirSync(path.join(root, "services")).flatMap((d) => {
    const dir = `services/${d}/migrations`;
    return existsSync(path.join(root, dir)) && statSync(path.join(root, dir)).isDirectory()
      ? readdirSync(path.join(root, dir))
          .filter((f) => f.endsWith(".ts"))
          .map((f) => `${dir}/${f}`)
      : [];
  });
  const entries = [...serviceEntries, "gateway/main.ts", "deploy/compose/grpc-health-probe.ts", ...migrations];

  it("builds a non-root, production-dependency image from node:20-bookworm-slim in stages", () => {
    expect(dockerfile).toMatch(/^ARG NODE_IMAGE=node:20-bookworm-slim$/m);
    expect(dockerfile.match(/^FROM /gm)?.length).toBeGreaterThanOrEqual(2);
    expect(dockerfile).toMatch(/npm ci --omit=dev/);
    const users = [...dockerfile.matchAll(/^USER\s+(\S+)/gm)].map((m) => m[1]!);
    expect(users.length).toBeGreaterThan(0);
    expect(users.at(-1)).not.toMatch(/^(0|root)(:|$)/);
    expect(dockerfile).toMatch(/^ENTRYPOINT \["node", "--import", "tsx"\]$/m);
  });

  it("sends every file the entry points import into the build context, and nothing local", () => {
    expect(serviceEntries).toContain("services/documents/main.ts");
    const { files } = reachable(entries);
    expect([...files].filter((f) => !inContext(f))).toEqual([]);
    for (const kept of [
      "node_modules/tsx/package.json",
      ".data/x",
      "test/deploy/manifests.test.ts",
      "deploy/embedded/launch.ts",
      "services/documents/x.test.ts",
    ]) {
      expect(inContext(kept), kept).toBe(false);
    }
  });

  it("needs only production dependencies at runtime (npm ci --omit=dev)", () => {
    const pkg = JSON.parse(read("package.json")) as { dependencies: Record<string, string> };
    const { packages } = reachable(entries);
    expect([...packages].filter((p) => !(p in pkg.dependencies))).toEqual([]);
    expect(pkg.dependencies).toHaveProperty("tsx");
  });
});

// ---------------------------------------------------------------------------------------------
// Kubernetes

interface Built {
  objects: Obj[];
  /** Patch targets that matched nothing: a rename would silently drop the patch. */
  problems: string[];
}

/**
 * A small reading of a kustomization: resources, generators (literals), namespace and images.
 * Patches are only checked to hit something; `kubectl kustomize` (below, when present) applies them.
 */
function buildRaw(dir: string): Built {
  const k = parse(read(path.join(dir, "kustomization.yaml"))) as Obj;
  const objects: Obj[] = [];
  const problems: string[] = [];
  for (const r of (k.resources ?? []) as string[]) {
    const p = path.join(dir, r);
    if (!existsSync(path.join(root, p))) {
      problems.push(`${dir}: resource ${r} does not exist`);
      continue;
    }
    if (statSync(path.join(root, p)).isDirectory()) {
      const sub = buildRaw(p);
      objects.push(...sub.objects);
      problems.push(...sub.problems);
    } else {
      for (const doc of parseAllDocuments(read(p))) {
        if (doc.errors.length) problems.push(`${p}: ${doc.errors[0]!.message}`);
        const o = doc.toJS() as Obj | null;
        if (o) objects.push(o);
      }
    }
  }
  const generate = (kind: string, gens: Obj[] | undefined) => {
    for (const g of gens ?? []) {
      const data = Object.fromEntries(
        ((g.literals ?? []) as string[]).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
      );
      const existing = objects.find((o) => o.kind === kind && o.metadata.name === g.name);
      if (g.behavior === "merge" || g.behavior === "replace") {
        if (!existing)
          problems.push(`${dir}: ${kind} ${g.name} has behavior ${g.behavior} but nothing to ${g.behavior}`);
        else if (kind === "Secret")
          existing.stringData = g.behavior === "merge" ? { ...existing.stringData, ...data } : data;
        else existing.data = g.behavior === "merge" ? { ...existing.data, ...data } : data;
      } else if (existing) problems.push(`${dir}: ${kind} ${g.name} generated twice`);
      // Secrets keep plain text in stringData, as kustomize's rendered output would after decoding.
      else
        objects.push({
          apiVersion: "v1",
          kind,
          metadata: { name: g.name },
          [kind === "Secret" ? "stringData" : "data"]: data,
        });
    }
  };
  generate("ConfigMap", k.configMapGenerator);
  generate("Secret", k.secretGenerator);
  for (const p of (k.patches ?? []) as Obj[]) {
    const t = p.target ?? {};
    const nameRe = t.name ? new RegExp(`^(?:${t.name})$`) : undefined;
    const hits = objects.filter((o) => (!t.kind || o.kind === t.kind) && (!nameRe || nameRe.test(o.metadata.name)));
    if (!hits.length) problems.push(`${dir}: patch for ${t.kind ?? "*"}/${t.name ?? "*"} matches nothing`);
  }
  for (const o of objects) {
    if (k.namespace && o.kind !== "Namespace") o.metadata.namespace = k.namespace;
    for (const c of containersOf(o)) {
      const img = ((k.images ?? []) as Obj[]).find((i) => i.name === String(c.image).split(":")[0]);
      if (img) c.image = `${img.newName ?? img.name}:${img.newTag ?? "latest"}`;
    }
  }
  return { objects, problems };
}

function containersOf(o: Obj): Obj[] {
  return o.kind === "Deployment" ? (o.spec.template.spec.containers as Obj[]) : [];
}

const matches = (selector: Record<string, string>, labels: Record<string, string> | undefined) =>
  Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels?.[k] === v);

/** Cross-references and mesh conventions that hold for any rendering of the manifests. */
async function checkManifests(objects: Obj[], opts: { secretsProvided: boolean }): Promise<string[]> {
  const problems: string[] = [];
  const find = (kind: string, name: string) => objects.find((o) => o.kind === kind && o.metadata.name === name);
  const deployments = objects.filter((o) => o.kind === "Deployment");
  const podLabels = (d: Obj) => d.spec.template.metadata.labels as Record<string, string>;

  for (const d of deployments) {
    if (!matches(d.spec.selector.matchLabels, podLabels(d)))
      problems.push(`Deployment ${d.metadata.name}: selector does not match its pod labels`);
    if (!objects.some((s) => s.kind === "Service" && matches(s.spec.selector, podLabels(d))))
      problems.push(`Deployment ${d.metadata.name}: no Service selects it`);
    const sa = d.spec.template.spec.serviceAccountName as string | undefined;
    if (sa && !find("ServiceAccount", sa)) problems.push(`Deployment ${d.metadata.name}: ServiceAccount ${sa} missing`);
  }
  for (const s of objects.filter((o) => o.kind === "Service")) {
    // What DNS name:port the callers' targets use; Kafka's port is the conventional one brokers use.
    const declared = meshProcesses[s.metadata.name] ?? (s.metadata.name === "kafka" ? components.kafka : undefined);
    if (declared && !(s.spec.ports as Obj[]).some((p) => p.port === declared.port))
      problems.push(`Service ${s.metadata.name}: does not serve port ${declared.port}, where callers look`);
    const targets = deployments.filter((d) => matches(s.spec.selector, podLabels(d)));
    if (!targets.length) problems.push(`Service ${s.metadata.name}: selector matches no Deployment`);
    for (const port of s.spec.ports as Obj[]) {
      const ok = targets.some((d) =>
        containersOf(d).some((c) =>
          (c.ports ?? []).some((cp: Obj) => cp.name === port.targetPort || cp.containerPort === port.targetPort),
        ),
      );
      if (!ok) problems.push(`Service ${s.metadata.name}: targetPort ${port.targetPort} is no container port`);
    }
  }
  for (const o of objects.filter((x) => x.kind === "PodDisruptionBudget")) {
    if (!deployments.some((d) => matches(o.spec.selector.matchLabels, podLabels(d))))
      problems.push(`PDB ${o.metadata.name}: selects no pods`);
  }
  for (const h of objects.filter((x) => x.kind === "HorizontalPodAutoscaler")) {
    const d = find(h.spec.scaleTargetRef.kind, h.spec.scaleTargetRef.name);
    if (!d) problems.push(`HPA ${h.metadata.name}: target ${h.spec.scaleTargetRef.name} missing`);
    else if (d.spec.replicas !== undefined)
      problems.push(`Deployment ${d.metadata.name}: sets replicas although an HPA owns them`);
    if (!(h.spec.metrics as Obj[]).some((m) => m.resource?.name === "cpu"))
      problems.push(`HPA ${h.metadata.name}: does not scale on CPU`);
  }

  for (const d of deployments) {
    const spec = d.spec.template.spec as Obj;
    for (const c of containersOf(d)) {
      const where = `Deployment ${d.metadata.name} container ${c.name}`;
      const env: Record<string, string> = {};
      for (const ref of (c.envFrom ?? []) as Obj[]) {
        const cm = ref.configMapRef
          ? find("ConfigMap", ref.configMapRef.name)
          : ref.secretRef
            ? find("Secret", ref.secretRef.name)
            : undefined;
        if (!cm) problems.push(`${where}: envFrom ${JSON.stringify(ref)} names nothing`);
        else Object.assign(env, cm.data ?? {}, cm.stringData ?? {});
      }
      for (const e of (c.env ?? []) as Obj[]) {
        const cmRef = e.valueFrom?.configMapKeyRef;
        const secretRef = e.valueFrom?.secretKeyRef;
        if (e.value !== undefined) env[e.name] = String(e.value);
        else if (cmRef) {
          const value = find("ConfigMap", cmRef.name)?.data?.[cmRef.key];
          if (value === undefined)
            problems.push(`${where}: ${e.name} refers to missing ConfigMap key ${cmRef.name}/${cmRef.key}`);
          else env[e.name] = value;
        } else if (secretRef) {
          const secret = find("Secret", secretRef.name);
          const encoded = secret?.data?.[secretRef.key] as string | undefined;
          const value =
            (secret?.stringData?.[secretRef.key] as string | undefined) ??
            (encoded === undefined ? undefined : Buffer.from(encoded, "base64").toString("utf8"));
          if (value !== undefined) env[e.name] = value;
          // An optional reference to a Secret that is not there leaves the variable unset.
          else if (secretRef.optional) continue;
          else if (opts.secretsProvided)
            problems.push(`${where}: ${e.name} refers to missing Secret key ${secretRef.name}/${secretRef.key}`);
          // Long enough to pass for a secret (MESH_EDGE_SECRET wants 32 characters or more).
          else
            env[e.name] =
              e.name === "DATABASE_URL" ? "postgres://placeholder@db:5432/placeholder" : "placeholder".padEnd(43, "-");
        }
      }
      const entry = (c.args ?? [])[0] as string | undefined;
      if (!entry?.endsWith(".ts")) continue; // not a medmesh process (e.g. the dev Postgres)

      problems.push(...(await checkProcessEnv(entry, env)).map((p) => `${where}: ${p}`));
      if (!c.resources?.requests?.cpu) problems.push(`${where}: no CPU request (the HPA needs one)`);
      if (!c.resources?.limits?.memory) problems.push(`${where}: no memory limit`);
      if (c.securityContext?.readOnlyRootFilesystem && !(c.volumeMounts ?? []).some((m: Obj) => m.mountPath === "/tmp"))
        problems.push(`${where}: read-only root without a writable /tmp for tsx`);
      if (spec.securityContext?.runAsNonRoot !== true) problems.push(`${where}: may run as root`);

      const portNumbers = (c.ports as Obj[]).map((p) => p.containerPort as number);
      const portNames = (c.ports as Obj[]).map((p) => p.name as string);
      const declared = meshProcesses[d.metadata.name];
      problems.push(...declaredPortProblems(where, env));
      if (!declared) problems.push(`${where}: not a component platform/config/components.ts declares`);
      else if (!portNumbers.includes(declared.port))
        problems.push(`${where}: no container port ${declared.port}, where ${declared.name} listens`);
      if (entry.startsWith("services/")) {
        const port = Number(env[declared?.portVariable ?? ""]);
        for (const probe of ["readinessProbe", "livenessProbe", "startupProbe"]) {
          if (c[probe]?.grpc?.port !== port || !portNumbers.includes(port))
            problems.push(`${where}: ${probe} is not a gRPC probe on the serving port ${port}`);
        }
      } else {
        if (c.readinessProbe?.httpGet?.path !== "/readyz") problems.push(`${where}: readiness is not /readyz`);
        if (c.livenessProbe?.httpGet?.path !== "/healthz") problems.push(`${where}: liveness is not /healthz`);
        for (const probe of [c.readinessProbe, c.livenessProbe]) {
          if (probe && !portNames.includes(probe.httpGet.port) && !portNumbers.includes(probe.httpGet.port))
            problems.push(`${where}: probe port ${probe.httpGet.port} is not a container port`);
        }
      }

      // The kubelet's clock starts before preStop: it must cover the sleep, then runMain's stop
      // (bounded at 15 s, and never shorter than the configured drain).
      const preStop = (c.lifecycle?.preStop?.exec?.command ?? []) as string[];
      const sleepS = preStop[0] === "sleep" ? Number(preStop[1]) : (c.lifecycle?.preStop?.sleep?.seconds ?? 0);
      if (!(sleepS > 0)) problems.push(`${where}: no preStop sleep for endpoint propagation`);
      const stopS = Math.max(15, Number(env.SHUTDOWN_GRACE_MS) / 1000);
      if (!(spec.terminationGracePeriodSeconds >= sleepS + stopS)) {
        problems.push(
          `${where}: terminationGracePeriodSeconds ${spec.terminationGracePeriodSeconds} < preStop ${sleepS} s + stop ${stopS} s`,
        );
      }
    }
  }
  return problems;
}

function kubectlAvailable(): boolean {
  try {
    execFileSync("kubectl", ["version", "--client"], { stdio: "ignore", timeout: 5_000 });
    return true;
  } catch {
    return false;
  }
}

describe("deploy/k8s", () => {
  const base = buildRaw("deploy/k8s/base");
  const dev = buildRaw("deploy/k8s/overlays/dev");

  it("has a Deployment, Service, PDB and HPA for documents, the processing worker and the gateway", () => {
    expect(base.problems).toEqual([]);
    for (const name of ["documents", "processing", "gateway"]) {
      for (const kind of [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceAccount",
      ]) {
        expect(
          base.objects.some((o) => o.kind === kind && o.metadata.name === name),
          `${kind} ${name}`,
        ).toBe(true);
      }
    }
    expect(base.objects.some((o) => o.kind === "Namespace")).toBe(true);
  });

  it("base: references resolve and the processes accept their configuration", async () => {
    expect(await checkManifests(base.objects, { secretsProvided: false })).toEqual([]);
  });

  it("dev overlay: references resolve, secrets included, and every patch hits a resource", async () => {
    expect(dev.problems).toEqual([]);
    expect(await checkManifests(dev.objects, { secretsProvided: true })).toEqual([]);
  });

  it("documents is headless so grpc-js balances per call across pods", () => {
    const svc = base.objects.find((o) => o.kind === "Service" && o.metadata.name === "documents")!;
    expect(svc.spec.clusterIP).toBe("None");
  });

  it("the checks themselves catch a broken reference", async () => {
    const broken = structuredClone(dev.objects);
    const gw = broken.find((o) => o.kind === "Deployment" && o.metadata.name === "gateway")!;
    gw.spec.template.spec.containers[0].envFrom[0].configMapRef.name = "no-such-config";
    gw.spec.template.spec.terminationGracePeriodSeconds = 10;
    const problems = await checkManifests(broken, { secretsProvided: true });
    expect(problems.some((p) => p.includes("no-such-config"))).toBe(true);
    expect(problems.some((p) => p.includes("terminationGracePeriodSeconds 10"))).toBe(true);
  });

  it.runIf(kubectlAvailable())("kubectl kustomize renders both, with generated names rewired", async () => {
    for (const dir of ["deploy/k8s/base", "deploy/k8s/overlays/dev"]) {
      const out = execFileSync("kubectl", ["kustomize", dir], { cwd: root, encoding: "utf8", timeout: 20_000 });
      const objects = parseAllDocuments(out).map((d) => d.toJS() as Obj);
      // Hash suffixes prove the generators ran and the references were rewritten to match.
      expect(objects.find((o) => o.kind === "ConfigMap")?.metadata.name).toMatch(/-[a-z0-9]{10}$/);
      expect(await checkManifests(objects, { secretsProvided: dir.includes("overlays") })).toEqual([]);
      if (dir.includes("dev")) {
        const docs = objects.find((o) => o.kind === "Deployment" && o.metadata.name === "documents")!;
        expect(docs.spec.template.spec.containers[0].image).toBe("medmesh:dev");
        expect(objects.find((o) => o.kind === "HorizontalPodAutoscaler")?.spec.minReplicas).toBe(1);
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Data that must survive a restart, settings that must reach the processes, and an install that
// must work from a fresh clone. Each check below failed on the manifests it was written against.

describe("deployments keep data and boot as written", () => {
  const compose = parse(read("docker-compose.yml"), { merge: true }) as Obj;
  const services = compose.services as Record<string, Obj>;
  const composeEnv = (name: string) =>
    Object.fromEntries(Object.entries(services[name]!.environment ?? {}).map(([k, v]) => [k, interpolate(v)]));
  const dockerfile = read("Dockerfile");
  // The image's ENV, which a process sees unless compose or Kubernetes overrides it.
  const imageEnv = Object.fromEntries(
    [...dockerfile.matchAll(/^\s*(?:ENV\s+)?([A-Z_][A-Z0-9_]*)=(\S+?)\s*\\?$/gm)].map((m) => [m[1]!, m[2]!]),
  );
  /** Where documents writes blobs, by the same rule as services/documents/main.ts. */
  const blobDirOf = (env: Record<string, string>) =>
    env.BLOB_DIR ?? path.posix.join(env.MEDMESH_DATA_DIR ?? imageEnv.MEDMESH_DATA_DIR ?? ".data", "blobs");
  const within = (dir: string, mount: string) => dir === mount || dir.startsWith(mount.replace(/\/?$/, "/"));

  /** Rendered by kubectl when it is installed (patches applied), else read by buildRaw. */
  const rendered = (dir: string): Obj[] =>
    kubectlAvailable()
      ? parseAllDocuments(execFileSync("kubectl", ["kustomize", dir], { cwd: root, encoding: "utf8", timeout: 20_000 }))
          .map((d) => d.toJS() as Obj)
          .filter(Boolean)
      : buildRaw(dir).objects;
  const k8s = { base: rendered("deploy/k8s/base"), dev: rendered("deploy/k8s/overlays/dev") };
  const deployment = (objects: Obj[], name: string) =>
    objects.find((o) => o.kind === "Deployment" && o.metadata.name === name)!;
  /** A container's environment from its ConfigMaps and literal values (secrets are not needed here). */
  const containerEnv = (objects: Obj[], c: Obj): Record<string, string> => {
    const env: Record<string, string> = {};
    for (const ref of (c.envFrom ?? []) as Obj[]) {
      const cm = objects.find((o) => o.kind === "ConfigMap" && o.metadata.name === ref.configMapRef?.name);
      Object.assign(env, cm?.data ?? {});
    }
    for (const e of (c.env ?? []) as Obj[]) if (e.value !== undefined) env[e.name] = String(e.value);
    return env;
  };
  const quantity = (q: string) => {
    const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(q);
    if (!m) throw new Error(`not a storage quantity: ${q}`);
    const unit = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };
    return Number(m[1]) * (m[2] ? unit[m[2] as keyof typeof unit] : 1);
  };

  it("gives Kafka a CLUSTER_ID of 16 bytes (base64url), without which the broker never formats its storage", () => {
    const kafka = deployment(k8s.dev, "kafka");
    const ids = {
      compose: composeEnv("kafka").CLUSTER_ID,
      "k8s dev": (kafka.spec.template.spec.containers[0].env as Obj[]).find((e) => e.name === "CLUSTER_ID")?.value,
    };
    for (const [where, id] of Object.entries(ids)) {
      expect(id, where).toMatch(/^[A-Za-z0-9_-]{22}$/);
      expect(Buffer.from(id!, "base64url").length, where).toBe(16);
    }
  });

  it("compose: documents keeps blobs on a named volume the runtime user can write, not on tmpfs", () => {
    const docs = services.documents!;
    const dir = blobDirOf({ ...imageEnv, ...composeEnv("documents") });
    const tmpfs = ((docs.tmpfs ?? []) as string[]).map((t) => t.split(":")[0]!);
    expect(
      tmpfs.filter((t) => within(dir, t)),
      `${dir} is on a tmpfs`,
    ).toEqual([]);
    const mounts = ((docs.volumes ?? []) as string[]).map((v) => v.split(":"));
    const mount = mounts.find(([, target]) => within(dir, target!));
    expect(mount, `no volume holds ${dir}`).toBeDefined();
    // A named volume, declared at the top level (a bind mount would depend on the host's layout).
    expect(Object.keys(compose.volumes ?? {})).toContain(mount![0]);
    // A new named volume copies the image directory's ownership; uid 1000 must own it.
    expect(dockerfile).toMatch(new RegExp(`chown 1000:1000 ${mount![1]!.replace(/[/.]/g, "\\$&")}\\b`));
    expect(String(docs.user ?? "1000").split(":")[0]).toBe("1000");
    expect(dockerfile).toMatch(/^USER 1000:1000$/m);
  });

  for (const [name, objects] of Object.entries(k8s)) {
    it(`k8s ${name}: documents keeps blobs on a PersistentVolumeClaim that holds an upload`, async () => {
      const d = deployment(objects, "documents");
      const c = (d.spec.template.spec.containers as Obj[]).find((x) => x.name === "documents")!;
      const env = containerEnv(objects, c);
      const dir = blobDirOf({ ...imageEnv, ...env });
      const mount = ((c.volumeMounts ?? []) as Obj[])
        .filter((m) => within(dir, m.mountPath))
        .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
      expect(mount, `no volume holds ${dir}`).toBeDefined();
      const volume = (d.spec.template.spec.volumes as Obj[]).find((v) => v.name === mount!.name)!;
      expect(volume.persistentVolumeClaim, `${dir} is on ${JSON.stringify(volume)}`).toBeDefined();
      const pvc = objects.find(
        (o) => o.kind === "PersistentVolumeClaim" && o.metadata.name === volume.persistentVolumeClaim.claimName,
      );
      expect(pvc, "the claim exists").toBeDefined();
      const spec = (await specFor("services/documents/main.ts"))!;
      const { UPLOAD_MAX_BYTES } = loadConfig(spec, { ...env, DATABASE_URL: "postgres://x@db:5432/x" }) as {
        UPLOAD_MAX_BYTES: number;
      };
      expect(quantity(pvc!.spec.resources.requests.storage)).toBeGreaterThanOrEqual(UPLOAD_MAX_BYTES);
      // The base lets the HPA spread replicas over nodes, and each replica must see every blob:
      // only ReadWriteMany allows that. The dev overlay runs on one node and says so.
      const hpa = objects.find(
        (o) => o.kind === "HorizontalPodAutoscaler" && o.spec.scaleTargetRef.name === "documents",
      );
      if (name === "base") {
        expect(hpa?.spec.maxReplicas).toBeGreaterThan(1);
        expect(pvc!.spec.accessModes).toContain("ReadWriteMany");
      } else {
        expect(pvc!.spec.accessModes.some((m: string) => m === "ReadWriteMany" || m === "ReadWriteOnce")).toBe(true);
      }
      expect(d.spec.template.spec.securityContext.fsGroup).toBe(1000);
    });
  }

  it("gives REDIS_URL to every process that reads it, in compose and in both k8s renderings", async () => {
    const readers: string[] = [];
    const problems: string[] = [];
    for (const [name, svc] of Object.entries(services)) {
      if (!svc.build) continue;
      const entry = (svc.command as string[])[0]!;
      if (!((await specFor(entry)) ?? {})["REDIS_URL"]) continue;
      readers.push(`compose ${name}`);
      const url = composeEnv(name).REDIS_URL;
      if (!url) {
        problems.push(`compose ${name}: REDIS_URL unset`);
        continue;
      }
      const host = new URL(url).hostname;
      if (!services[host]) problems.push(`compose ${name}: REDIS_URL names ${host}, which is no service`);
      else if (svc.depends_on?.[host]?.condition !== "service_healthy")
        problems.push(`compose ${name}: does not wait for a healthy ${host}`);
    }
    for (const [where, objects] of Object.entries(k8s)) {
      for (const d of objects.filter((o) => o.kind === "Deployment")) {
        for (const c of d.spec.template.spec.containers as Obj[]) {
          const entry = (c.args ?? [])[0] as string | undefined;
          if (!entry?.endsWith(".ts") || !((await specFor(entry)) ?? {})["REDIS_URL"]) continue;
          readers.push(`k8s ${where} ${d.metadata.name}`);
          const url = containerEnv(objects, c).REDIS_URL;
          if (!url) problems.push(`k8s ${where} ${d.metadata.name}: REDIS_URL unset`);
          // The dev overlay brings its own Redis; the base names the conventional Service.
          else if (where === "dev") {
            const u = new URL(url);
            const svc = objects.find((o) => o.kind === "Service" && o.metadata.name === u.hostname);
            if (!svc?.spec.ports.some((p: Obj) => String(p.port) === (u.port || "6379")))
              problems.push(`k8s dev ${d.metadata.name}: no Service ${u.hostname}:${u.port || 6379}`);
          }
        }
      }
    }
    for (const name of ["gateway", "identity"]) {
      expect(readers).toContain(`compose ${name}`);
      expect(readers).toContain(`k8s base ${name}`);
    }
    expect(problems).toEqual([]);
  });

  // The gateway signs client addresses with MESH_EDGE_SECRET and identity verifies them with it:
  // a process without it, or with another value, quietly limits every sign-in by the gateway's
  // address again. So every process whose configSpec declares it must get it, from a Secret in
  // Kubernetes, one value for all, and a value the process accepts in production.
  const edgeSecretOf = (spec: Spec | undefined) => spec?.MESH_EDGE_SECRET;
  const acceptsInProduction = (spec: Spec, value: string): string | undefined => {
    try {
      loadConfig({ MESH_EDGE_SECRET: edgeSecretOf(spec)! }, { MESH_EDGE_SECRET: value, NODE_ENV: "production" });
      return undefined;
    } catch (err) {
      return (err as Error).message;
    }
  };
  /** Who declares the secret in one k8s rendering, and what is wrong with how each gets it. */
  async function k8sEdgeSecretProblems(objects: Obj[], where: string, secretsProvided: boolean) {
    const readers: string[] = [];
    const problems: string[] = [];
    const values = new Set<string>();
    for (const d of objects.filter((o) => o.kind === "Deployment")) {
      for (const c of d.spec.template.spec.containers as Obj[]) {
        const entry = (c.args ?? [])[0] as string | undefined;
        const spec = entry?.endsWith(".ts") ? await specFor(entry) : undefined;
        if (!edgeSecretOf(spec)) continue;
        const who = `k8s ${where} ${d.metadata.name}`;
        readers.push(who);
        const e = ((c.env ?? []) as Obj[]).find((x) => x.name === "MESH_EDGE_SECRET");
        const ref = e?.valueFrom?.secretKeyRef;
        if (!e) problems.push(`${who}: MESH_EDGE_SECRET not given`);
        else if (!ref) problems.push(`${who}: MESH_EDGE_SECRET not taken from a Secret`);
        else if (ref.optional) problems.push(`${who}: MESH_EDGE_SECRET is optional, and required in production`);
        else if (secretsProvided) {
          const secret = objects.find((o) => o.kind === "Secret" && o.metadata.name === ref.name);
          const encoded = secret?.data?.[ref.key] as string | undefined;
          const value =
            (secret?.stringData?.[ref.key] as string | undefined) ??
            (encoded === undefined ? undefined : Buffer.from(encoded, "base64").toString("utf8"));
          if (value === undefined) problems.push(`${who}: Secret ${ref.name}/${ref.key} missing`);
          else {
            values.add(value);
            const refused = acceptsInProduction(spec!, value);
            if (refused) problems.push(`${who}: ${refused}`);
          }
        }
      }
    }
    if (values.size > 1) problems.push(`k8s ${where}: processes get different MESH_EDGE_SECRET values`);
    return { readers, problems };
  }

  it("gives MESH_EDGE_SECRET, one value, to every process that declares it, from a Secret in k8s", async () => {
    const readers: string[] = [];
    const problems: string[] = [];
    const composeValues = new Set<string>();
    for (const [name, svc] of Object.entries(services)) {
      if (!svc.build) continue;
      const spec = await specFor((svc.command as string[])[0]!);
      if (!edgeSecretOf(spec)) continue;
      readers.push(`compose ${name}`);
      const value = composeEnv(name).MESH_EDGE_SECRET;
      if (!value) problems.push(`compose ${name}: MESH_EDGE_SECRET unset`);
      else {
        composeValues.add(value);
        const refused = acceptsInProduction(spec!, value);
        if (refused) problems.push(`compose ${name}: ${refused}`);
      }
    }
    if (composeValues.size > 1) problems.push("compose: processes get different MESH_EDGE_SECRET values");
    for (const [where, objects] of Object.entries(k8s)) {
      const found = await k8sEdgeSecretProblems(objects, where, where === "dev");
      readers.push(...found.readers);
      problems.push(...found.problems);
    }
    for (const name of ["gateway", "identity"]) {
      for (const where of ["compose", "k8s base", "k8s dev"]) expect(readers).toContain(`${where} ${name}`);
    }
    expect(problems).toEqual([]);

    // The check itself fails when a process loses the secret or gets another one.
    const broken = structuredClone(k8s.dev);
    const identityEnv = deployment(broken, "identity").spec.template.spec.containers[0].env as Obj[];
    identityEnv.splice(
      identityEnv.findIndex((e) => e.name === "MESH_EDGE_SECRET"),
      1,
    );
    const secret = broken.find((o) => o.kind === "Secret" && String(o.metadata.name).startsWith("mesh-edge-secret"))!;
    if (secret.stringData) secret.stringData.MESH_EDGE_SECRET = "short";
    else secret.data.MESH_EDGE_SECRET = Buffer.from("short").toString("base64");
    const caught = (await k8sEdgeSecretProblems(broken, "dev", true)).problems;
    expect(caught).toContain("k8s dev identity: MESH_EDGE_SECRET not given");
    expect(
      caught.some((p) => p.startsWith("k8s dev gateway:") && /MESH_EDGE_SECRET: each secret must be/.test(p)),
    ).toBe(true);
  });

  it("npm ci accepts the lock file of a fresh clone (every optional platform package listed)", () => {
    // Only the files a clone has, in an empty directory with an empty cache, offline: npm ci checks
    // that package.json and the lock agree and that every dependency, optional per-platform ones
    // for other systems included, is in the lock, before it would download anything.
    const dir = mkdtempSync(path.join(os.tmpdir(), "medmesh-npm-ci-"));
    try {
      for (const f of ["package.json", "package-lock.json", ".npmrc"])
        copyFileSync(path.join(root, f), path.join(dir, f));
      const run = spawnSync(
        "npm",
        [
          "ci",
          "--dry-run",
          "--offline",
          "--ignore-scripts",
          "--no-audit",
          "--no-fund",
          "--cache",
          path.join(dir, "cache"),
        ],
        { cwd: dir, encoding: "utf8", timeout: 60_000 },
      );
      expect(
        run.status,
        `${run.stderr}`
          .split("\n")
          .filter((l) => /Missing|Invalid|error/.test(l))
          .slice(0, 8)
          .join("\n"),
      ).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 90_000);
});
