import { execFileSync } from "node:child_process";
import { createDecipheriv, createECDH, createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { Agent, createServer } from "node:https";
import os from "node:os";
import path from "node:path";

/**
 * A Web Push service for tests: HTTPS on loopback with a certificate made for the run, and
 * browsers' side of RFC 8291, so a test can read what was pushed. `/gone/…` endpoints answer
 * 410, as a push service does for a subscription the browser dropped; a subscription made with
 * `unavailableOnce: text` answers the first push that says `text` with 503, as a push service
 * that is briefly down, and takes it when it comes again.
 */
export interface TestPushService {
  /** Trusts this service's certificate (and no other): give it to the sender. */
  agent: Agent;
  /** A browser's subscription at this service. */
  subscribe(
    name: string,
    opts?: { gone?: boolean; unavailableOnce?: string },
  ): {
    endpoint: string;
    p256dh: string;
    auth: string;
    /** Plain texts received for this subscription. */
    received: string[];
  };
  /** Authorization headers of every push received. */
  authorizations: string[];
  stop(): Promise<void>;
}

const hmac = (key: Buffer, data: Buffer) => createHmac("sha256", key).update(data).digest();

/** RFC 8291 / RFC 8188 (aes128gcm, one record) as the receiving browser does it. */
function decrypt(body: Buffer, ua: ReturnType<typeof createECDH>, auth: Buffer): string {
  const salt = body.subarray(0, 16);
  const idlen = body[20]!;
  const asPublic = body.subarray(21, 21 + idlen);
  const record = body.subarray(21 + idlen);
  const ecdhSecret = ua.computeSecret(asPublic);
  const keyInfo = Buffer.concat([Buffer.from("WebPush: info\0"), ua.getPublicKey(), asPublic]);
  const ikm = hmac(hmac(auth, ecdhSecret), Buffer.concat([keyInfo, Buffer.from([1])]));
  const prk = hmac(salt, ikm);
  const cek = hmac(prk, Buffer.from("Content-Encoding: aes128gcm\0\x01", "binary")).subarray(0, 16);
  const nonce = hmac(prk, Buffer.from("Content-Encoding: nonce\0\x01", "binary")).subarray(0, 12);
  const decipher = createDecipheriv("aes-128-gcm", cek, nonce);
  decipher.setAuthTag(record.subarray(record.length - 16));
  const padded = Buffer.concat([decipher.update(record.subarray(0, record.length - 16)), decipher.final()]);
  // The last record ends with a 0x02 delimiter followed by zero padding.
  let end = padded.length - 1;
  while (end > 0 && padded[end] === 0) end--;
  if (padded[end] !== 2) throw new Error("no padding delimiter: not a last record");
  return padded.subarray(0, end).toString("utf8");
}

export async function startPushService(): Promise<TestPushService> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "medmesh-push-"));
  const key = path.join(dir, "key.pem");
  const cert = path.join(dir, "cert.pem");
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      key,
      "-out",
      cert,
      "-days",
      "1",
      "-subj",
      "/CN=127.0.0.1",
      "-addext",
      "subjectAltName=IP:127.0.0.1",
    ],
    { stdio: "ignore" },
  );
  const subs = new Map<
    string,
    { ua: ReturnType<typeof createECDH>; auth: Buffer; received: string[]; unavailableOnce?: string }
  >();
  const authorizations: string[] = [];
  const server = createServer({ key: readFileSync(key), cert: readFileSync(cert) }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const name = (req.url ?? "").split("/").pop() ?? "";
      if ((req.url ?? "").startsWith("/gone/")) {
        res.writeHead(410).end("subscription expired");
        return;
      }
      const sub = subs.get(name);
      if (!sub) {
        res.writeHead(404).end();
        return;
      }
      authorizations.push(String(req.headers.authorization ?? ""));
      try {
        const text = decrypt(Buffer.concat(chunks), sub.ua, sub.auth);
        if (sub.unavailableOnce && text.includes(sub.unavailableOnce)) {
          sub.unavailableOnce = undefined;
          res.writeHead(503).end("try again later");
          return;
        }
        sub.received.push(text);
        res.writeHead(201).end();
      } catch (err) {
        res.writeHead(400).end((err as Error).message);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  const agent = new Agent({ ca: readFileSync(cert) });
  return {
    agent,
    authorizations,
    subscribe(name, opts = {}) {
      const ua = createECDH("prime256v1");
      ua.generateKeys();
      const auth = randomBytes(16);
      const received: string[] = [];
      subs.set(name, { ua, auth, received, unavailableOnce: opts.unavailableOnce });
      return {
        endpoint: `https://127.0.0.1:${port}/${opts.gone ? "gone" : "push"}/${name}`,
        p256dh: ua.getPublicKey().toString("base64url"),
        auth: auth.toString("base64url"),
        received,
      };
    },
    async stop() {
      agent.destroy();
      await new Promise<void>((r) => server.close(() => r()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
