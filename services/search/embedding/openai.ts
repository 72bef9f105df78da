import { EmbeddingError, type Embedder } from "./embedder.js";

/**
 * An embeddings endpoint that speaks OpenAI's shape (POST {model, input: [...]}, answer
 * {data: [{index, embedding}]}): OpenAI itself, and the many local servers that copy it (vLLM,
 * llama.cpp, Ollama, text-embeddings-inference).
 */
export interface OpenAIEmbedderOptions {
  /** The full endpoint, e.g. http://127.0.0.1:8080/v1/embeddings. */
  url: string;
  model: string;
  apiKey?: string;
  /** Per request (one batch). */
  timeoutMs?: number;
  batchSize?: number;
  fetch?: typeof fetch;
}

export class OpenAIEmbedder implements Embedder {
  readonly name: string;
  private readonly timeoutMs: number;
  private readonly batchSize: number;
  private readonly fetchFn: typeof fetch;

  private constructor(
    private readonly options: OpenAIEmbedderOptions,
    readonly dimensions: number,
  ) {
    this.name = `openai:${options.model}`;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.batchSize = options.batchSize ?? 64;
    this.fetchFn = options.fetch ?? fetch;
  }

  /** Asks the endpoint once, to learn the model's dimensions and fail at start, not at the first search. */
  static async connect(options: OpenAIEmbedderOptions): Promise<OpenAIEmbedder> {
    const probe = new OpenAIEmbedder(options, 0);
    const [v] = await probe.request(["dimension probe"]);
    return new OpenAIEmbedder(options, v!.length);
  }

  async embed(texts: readonly string[]): Promise<Float32Array[]> {
    const out: Float32Array[] = [];
    for (let i = 0; i < texts.length; i += this.batchSize) {
      const batch = await this.request(texts.slice(i, i + this.batchSize));
      for (const v of batch) {
        if (this.dimensions && v.length !== this.dimensions) {
          throw new EmbeddingError(
            `${this.where()} returned a vector of ${v.length} dimensions where ${this.dimensions} were expected`,
            false,
          );
        }
        out.push(v);
      }
    }
    return out;
  }

  private where(): string {
    // The URL without credentials or query string: safe for logs.
    const u = new URL(this.options.url);
    return `the embeddings endpoint ${u.origin}${u.pathname}`;
  }

  private async request(input: readonly string[]): Promise<Float32Array[]> {
    if (input.length === 0) return [];
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (this.options.apiKey) headers.authorization = `Bearer ${this.options.apiKey}`;
    let res: Response;
    try {
      res = await this.fetchFn(this.options.url, {
        method: "POST",
        headers,
        body: JSON.stringify({ model: this.options.model, input }),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (err) {
      const e = err as Error;
      if (e.name === "TimeoutError" || e.name === "AbortError") {
        throw new EmbeddingError(`${this.where()} did not answer within ${this.timeoutMs} ms`, true);
      }
      const cause = (e.cause as { code?: string } | undefined)?.code ?? e.message;
      throw new EmbeddingError(`${this.where()} could not be reached (${cause})`, true);
    }
    let body: string;
    try {
      body = await res.text();
    } catch (err) {
      const e = err as Error;
      const timedOut = e.name === "TimeoutError" || e.name === "AbortError";
      throw new EmbeddingError(
        timedOut
          ? `${this.where()} did not finish its answer within ${this.timeoutMs} ms`
          : `${this.where()} broke off its answer (${e.message})`,
        true,
      );
    }
    if (!res.ok) {
      const transient = res.status === 408 || res.status === 429 || res.status >= 500;
      throw new EmbeddingError(
        `${this.where()} answered HTTP ${res.status}${summary(body) ? `: ${summary(body)}` : ""}`,
        transient,
      );
    }
    return this.parse(body, input.length);
  }

  private parse(body: string, expected: number): Float32Array[] {
    const bad = (why: string) => new EmbeddingError(`${this.where()} gave an answer of the wrong shape: ${why}`, false);
    let json: unknown;
    try {
      json = JSON.parse(body);
    } catch {
      throw bad("not JSON");
    }
    const data = (json as { data?: unknown }).data;
    if (!Array.isArray(data)) throw bad('no "data" array');
    if (data.length !== expected) throw bad(`${data.length} embeddings for ${expected} inputs`);
    const out: (Float32Array | undefined)[] = new Array(expected);
    data.forEach((item: unknown, position: number) => {
      const { index, embedding } = (item ?? {}) as { index?: unknown; embedding?: unknown };
      const at = index === undefined ? position : index;
      if (typeof at !== "number" || !Number.isInteger(at) || at < 0 || at >= expected || out[at]) {
        throw bad(`item ${position} has a missing, repeated or out-of-range index`);
      }
      if (!Array.isArray(embedding) || embedding.length === 0) throw bad(`item ${position} has no embedding array`);
      if (!embedding.every((x) => typeof x === "number" && Number.isFinite(x))) {
        throw bad(`item ${position} has a value that is not a finite number`);
      }
      out[at] = Float32Array.from(embedding as number[]);
    });
    const dims = out[0]!.length;
    if (out.some((v) => v!.length !== dims)) throw bad("vectors of different lengths in one answer");
    return out as Float32Array[];
  }
}

/** The first line of an error body, short: enough to act on, never a page of HTML. */
function summary(body: string): string {
  let text = body;
  try {
    const json = JSON.parse(body) as { error?: { message?: unknown } | string };
    const m = typeof json.error === "string" ? json.error : json.error?.message;
    if (typeof m === "string") text = m;
  } catch {
    // not JSON: use the text
  }
  const line = text.trim().split("\n")[0] ?? "";
  return line.length > 200 ? `${line.slice(0, 200)}…` : line;
}
