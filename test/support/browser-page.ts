import { ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { DocumentService, DocumentType, ProcessingStatus } from "../../gen/medmesh/documents/v1/documents_pb.js";
import { IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { NotificationService } from "../../gen/medmesh/notifications/v1/notifications_pb.js";
import { SearchService } from "../../gen/medmesh/search/v1/search_pb.js";

// Runs INSIDE Chromium, bundled by esbuild (test/support/browser.ts): connect-web clients calling the
// gateway with the browser's own fetch, CORS and streams. Each scenario takes plain JSON and returns
// plain JSON, because that is all page.evaluate carries across.

export type Wire = "connect-json" | "connect-binary" | "connect-get" | "grpc-web";

export interface Call {
  gateway: string;
  wire: Wire;
  token?: string;
}

/** What a failed call looked like from the page: the Connect code's name and the human sentence. */
export interface Failure {
  failed: true;
  code: string;
  message: string;
  /** What the browser's fetch said, when the call never got an answer (CORS). */
  cause?: string;
  /** The type names of the error details the page could decode. */
  details: string[];
}

const codeNames: Record<number, string> = {
  1: "canceled",
  2: "unknown",
  3: "invalid_argument",
  4: "deadline_exceeded",
  5: "not_found",
  6: "already_exists",
  7: "permission_denied",
  8: "resource_exhausted",
  9: "failed_precondition",
  10: "aborted",
  11: "out_of_range",
  12: "unimplemented",
  13: "internal",
  14: "unavailable",
  15: "data_loss",
  16: "unauthenticated",
};

function failure(err: unknown): Failure {
  const e = ConnectError.from(err);
  const cause = e.cause instanceof Error ? `${e.cause.name}: ${e.cause.message}` : undefined;
  const details = e.details.map((d) => ("desc" in d ? d.desc.typeName : d.type));
  return { failed: true, code: codeNames[e.code] ?? String(e.code), message: e.rawMessage, cause, details };
}

async function settle<T>(work: () => Promise<T>): Promise<T | Failure> {
  try {
    return await work();
  } catch (err) {
    return failure(err);
  }
}

function transport({ gateway, wire, token }: Call): Transport {
  const bearer: Interceptor = (next) => (req) => {
    if (token) req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
  if (wire === "grpc-web") return createGrpcWebTransport({ baseUrl: gateway, interceptors: [bearer] });
  return createConnectTransport({
    baseUrl: gateway,
    useBinaryFormat: wire === "connect-binary",
    useHttpGet: wire === "connect-get",
    interceptors: [bearer],
  });
}

const password = "a long browser password";

const scenarios = {
  /** Signs a new account up and in; the first one with the bootstrap address is the admin. */
  signUp(call: Call, who: { email: string; username: string }) {
    return settle(async () => {
      const identity = createClient(IdentityService, transport(call));
      const { user } = await identity.register({ ...who, password, firstName: "Browser", lastName: "Tab" });
      const login = await identity.login({ login: who.username, password });
      if (login.result.case !== "tokens") throw new Error("no tokens");
      return { userId: user!.id, token: login.result.value.accessToken };
    });
  },

  getMe(call: Call) {
    return settle(async () => {
      const me = await createClient(IdentityService, transport(call)).getMe({});
      return { subject: me.subject };
    });
  },

  createDocument(call: Call, title: string) {
    return settle(async () => {
      const { document } = await createClient(DocumentService, transport(call)).createDocument({
        document: { title, documentType: DocumentType.REVIEW },
      });
      return { id: document!.id, title: document!.title };
    });
  },

  getDocument(call: Call, id: string) {
    return settle(async () => {
      const { document } = await createClient(DocumentService, transport(call)).getDocument({ id });
      return { id: document!.id, title: document!.title };
    });
  },

  search(call: Call, query: string) {
    return settle(async () => {
      const res = await createClient(SearchService, transport(call)).search({ query });
      return { totalCount: Number(res.totalCount) };
    });
  },

  /** An admin's announcement to everyone, sent now. */
  announce(call: Call, title: string) {
    return settle(async () => {
      const res = await createClient(NotificationService, transport(call)).sendAnnouncement({
        title,
        body: `${title}: sent from a browser tab`,
      });
      return { announcementId: res.announcementId };
    });
  },

  /** A public method that needs no token: with GET, a request the browser sends without a preflight. */
  getJwks(call: Call) {
    return settle(async () => {
      const res = await createClient(IdentityService, transport(call)).getJwks({});
      return { keys: res.keys.length };
    });
  },

  /**
   * Opens a server stream and returns at once; the stream fills `streams[name]` as messages come,
   * so the test can act while it is open (make a notification, abort it) and read what it saw.
   */
  openStream(call: Call, name: string, stream: { watch: string } | { subscribe: true }, timeoutMs?: number) {
    const abort = new AbortController();
    const state: StreamState = { messages: [], ended: undefined };
    streams.set(name, { state, abort });
    const options = { signal: abort.signal, timeoutMs };
    const messages: AsyncIterable<string> =
      "watch" in stream
        ? mapStream(
            createClient(DocumentService, transport(call)).watchDocument({ id: stream.watch }, options),
            (r) => ProcessingStatus[r.status],
          )
        : mapStream(
            createClient(NotificationService, transport(call)).subscribe({ afterSequence: 0n }, options),
            (r) => r.notification?.title ?? "",
          );
    void (async () => {
      try {
        for await (const m of messages) state.messages.push(m);
        state.ended = "ok";
      } catch (err) {
        state.ended = failure(err);
      }
    })();
    return true;
  },

  streamState(name: string): StreamState | undefined {
    return streams.get(name)?.state;
  },

  abortStream(name: string) {
    streams.get(name)?.abort.abort();
    return true;
  },

  /**
   * Resumable upload in Connect unary calls: start, parts of at most 4 MiB (the largest the contract
   * takes; over JSON, base64 makes it about 5.6 MB of body), complete. The file is `text` repeated
   * to `totalBytes`.
   */
  resumableUpload(call: Call, title: string, text: string, totalBytes: number) {
    return settle(async () => {
      const docs = createClient(DocumentService, transport(call));
      const unit = new TextEncoder().encode(text);
      const bytes = new Uint8Array(totalBytes);
      for (let at = 0; at < totalBytes; at += unit.length) bytes.set(unit.subarray(0, totalBytes - at), at);
      const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
      const sha256 = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
      const started = await docs.startUpload({
        header: {
          document: { title, documentType: DocumentType.RESEARCH_PAPER },
          filename: "notes.txt",
          declaredMimeType: "text/plain",
        },
        sizeBytes: BigInt(totalBytes),
      });
      const uploadId = started.upload!.uploadId;
      let parts = 0;
      for (let offset = 0; offset < totalBytes; offset += maxPartBytes, parts++) {
        const data = bytes.subarray(offset, offset + maxPartBytes);
        await docs.uploadPart({ uploadId, offset: BigInt(offset), data });
      }
      const done = await docs.completeUpload({ uploadId, sha256 });
      return {
        documentId: done.document?.id ?? "",
        version: done.version?.version ?? 0,
        parts,
        sent: sha256,
        stored: done.version?.sha256 ?? "",
        sizeBytes: Number(done.version?.sizeBytes ?? 0),
      };
    });
  },
};

const maxPartBytes = 4 * 1024 * 1024;

interface StreamState {
  messages: string[];
  /** "ok", or how it failed; undefined while open. */
  ended: "ok" | Failure | undefined;
}

const streams = new Map<string, { state: StreamState; abort: AbortController }>();

async function* mapStream<T>(source: AsyncIterable<T>, f: (m: T) => string): AsyncIterable<string> {
  for await (const m of source) yield f(m);
}

(globalThis as unknown as { meshPage: typeof scenarios }).meshPage = scenarios;

export type Scenarios = typeof scenarios;
