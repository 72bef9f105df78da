import { existsSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { chromium, type Browser, type Page, type Request } from "playwright-core";
import type { Scenarios } from "./browser-page.js";

// The node side of the browser tests: the page's script bundled in memory, a tiny HTTP server
// giving it an origin of its own, and a headless Chromium driven by playwright-core.

// Where Debian's chromium package puts it, and where .ci/run installs it.
export const chromiumPath = "/usr/bin/chromium";

export const haveChromium = existsSync(chromiumPath);

const here = path.dirname(fileURLToPath(import.meta.url));

/** The page's script: test/support/browser-page.ts with connect-web and the generated code. */
export async function bundlePageScript(): Promise<string> {
  const out = await build({
    entryPoints: [path.join(here, "browser-page.ts")],
    bundle: true,
    write: false,
    format: "esm",
    platform: "browser",
    target: "chrome120",
    logLevel: "silent",
  });
  return out.outputFiles[0]!.text;
}

export interface PageServer {
  port: number;
  close(): Promise<void>;
}

/** Serves an empty page and its script; whatever host name it is reached by is its origin. */
export async function servePage(script: string): Promise<PageServer> {
  const server = http.createServer((req, res) => {
    if (req.url === "/page.js") {
      res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" });
      return res.end(script);
    }
    if (req.url === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      return res.end(
        `<!doctype html><title>medmesh browser test</title><script type="module" src="/page.js"></script>`,
      );
    }
    res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: chromiumPath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    timeout: 30_000,
  });
}

/** A request as the browser put it on the wire. */
export interface SeenRequest {
  method: string;
  url: string;
  contentType?: string;
  /** The answer's HTTP status, once one came (a response the page was not allowed to read included). */
  status?: number;
}

export interface TestPage {
  page: Page;
  origin: string;
  /** Every request the page made, preflights included, in order. */
  requests: SeenRequest[];
  /** Runs a scenario of browser-page.ts in the page and returns what it returned. */
  run<K extends keyof Scenarios>(
    name: K,
    ...args: Parameters<Scenarios[K]>
  ): Promise<Awaited<ReturnType<Scenarios[K]>>>;
  /** Messages the page logged as errors (CORS refusals land here). */
  consoleErrors: string[];
}

export async function openTestPage(browser: Browser, origin: string): Promise<TestPage> {
  const context = await browser.newContext();
  const page = await context.newPage();
  const requests: SeenRequest[] = [];
  const consoleErrors: string[] = [];
  const seen = new Map<Request, SeenRequest>();
  page.on("request", (r) => {
    const entry = { method: r.method(), url: r.url(), contentType: r.headers()["content-type"] };
    seen.set(r, entry);
    requests.push(entry);
  });
  page.on("response", (r) => {
    const entry = seen.get(r.request());
    if (entry) entry.status = r.status();
  });
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text());
  });
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => "meshPage" in globalThis, undefined, { timeout: 10_000 });
  return {
    page,
    origin,
    requests,
    consoleErrors,
    // A string, not a function: page.evaluate would otherwise ship this file's transpiled code.
    run: (name, ...args) => page.evaluate(`globalThis.meshPage.${name}(...${JSON.stringify(args)})`) as Promise<never>,
  };
}
