import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EmbeddingError } from "./embedder.js";
import { OpenAIEmbedder } from "./openai.js";

/** A small embeddings server; what it answers depends on the model named in the request. */
interface Seen {
  model: string;
  input: string[];
  authorization?: string;
}
const seen: Seen[] = [];
let server: Server;
let url: string;

function vectorFor(text: string): number[] {
  return [text.length, text.charCodeAt(0) || 0, 1];
}

async function handle(req: IncomingMessage, res: ServerResponse) {
  let raw = "";
  for await (const chunk of req) raw += chunk;
  const body = JSON.parse(raw) as { model: string; input: string[] };
  seen.push({ model: body.model, input: body.input, authorization: req.headers.authorization });
  const json = (status: number, value: unknown) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(value));
  };
  switch (body.model) {
    case "good": {
      // Items out of order: the client must place them by index.
      const data = body.input.map((t, index) => ({ object: "embedding", index, embedding: vectorFor(t) }));
      return json(200, { object: "list", data: data.reverse(), model: "good" });
    }
    case "overloaded":
      return json(503, { error: { message: "model is loading, retry later" } });
    case "refused":
      return json(400, { error: { message: "input too long for this model" } });
    case "html":
      res.writeHead(502, { "content-type": "text/html" });
      return res.end("<html>\n<body>bad gateway</body></html>");
    case "short":
      return json(200, { data: [{ index: 0, embedding: [1, 2] }] });
    case "nan":
      return json(200, { data: body.input.map((_, index) => ({ index, embedding: [1, "x"] })) });
    case "ragged":
      return json(200, { data: body.input.map((_, index) => ({ index, embedding: index ? [1, 2] : [1, 2, 3] })) });
    case "slow":
      return; // never answers
    default:
      return json(404, { error: `unknown model ${body.model}` });
  }
}

beforeAll(async () => {
  server = createServer((req, res) => void handle(req, res).catch(() => res.destroy()));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/embeddings`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

async function failure(p: Promise<unknown>): Promise<EmbeddingError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(EmbeddingError);
    return err as EmbeddingError;
  }
  throw new Error("expected a failure");
}

describe("the OpenAI-compatible embedder", () => {
  it("learns the dimensions on connect, sends the key, and returns vectors in input order", async () => {
    seen.length = 0;
    const e = await OpenAIEmbedder.connect({ url, model: "good", apiKey: "sekret" });
    expect(e.dimensions).toBe(3);
    expect(e.name).toBe("openai:good");
    const texts = ["a", "bb", "ccc"];
    const vs = await e.embed(texts);
    expect(vs.map((v) => [...v])).toEqual(texts.map(vectorFor));
    expect(seen.every((s) => s.authorization === "Bearer sekret")).toBe(true);
  });

  it("sends large inputs in batches", async () => {
    const e = await OpenAIEmbedder.connect({ url, model: "good", batchSize: 2 });
    seen.length = 0;
    const texts = ["a", "b", "c", "d", "e"];
    expect(await e.embed(texts)).toHaveLength(5);
    expect(seen.map((s) => s.input)).toEqual([["a", "b"], ["c", "d"], ["e"]]);
    expect(seen[0]!.authorization).toBeUndefined();
    expect(await e.embed([])).toEqual([]);
  });

  it.each([
    ["overloaded", true, /answered HTTP 503: model is loading, retry later$/],
    ["refused", false, /answered HTTP 400: input too long for this model$/],
    ["html", true, /answered HTTP 502: <html>$/],
    ["unknown", false, /answered HTTP 404: unknown model unknown$/],
    ["short", false, /wrong shape: 1 embeddings for 2 inputs/],
    ["nan", false, /wrong shape: item 0 has a value that is not a finite number/],
    ["ragged", false, /wrong shape: vectors of different lengths/],
  ])("model %s: an error saying so (transient: %s)", async (model, transient, message) => {
    const good = await OpenAIEmbedder.connect({ url, model: "good" });
    // Same endpoint, another model: reuse the connect path for the probe errors too.
    const err = await failure(OpenAIEmbedder.connect({ url, model }).then((e) => e.embed(["x", "y"])));
    expect(err.transient).toBe(transient);
    expect(err.message).toMatch(message);
    expect(err.message).toContain(`the embeddings endpoint ${url}`);
    expect(good.dimensions).toBe(3);
  });

  it("gives up after its timeout, as a transient error", async () => {
    const err = await failure(OpenAIEmbedder.connect({ url, model: "slow", timeoutMs: 200 }));
    expect(err.transient).toBe(true);
    expect(err.message).toMatch(/did not answer within 200 ms$/);
  });

  it("says when nothing listens, without the key in the message", async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    const err = await failure(
      OpenAIEmbedder.connect({ url: `http://127.0.0.1:${port}/v1/embeddings?k=1`, model: "good", apiKey: "sekret" }),
    );
    expect(err.transient).toBe(true);
    expect(err.message).toBe(
      `the embeddings endpoint http://127.0.0.1:${port}/v1/embeddings could not be reached (ECONNREFUSED)`,
    );
  });
});
