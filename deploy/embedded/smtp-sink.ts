import { randomUUID } from "node:crypto";
import { createWriteStream, mkdirSync } from "node:fs";
import { rename } from "node:fs/promises";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { SMTPServer } from "smtp-server";
import { env, loadConfig } from "../../platform/config/env.js";
import { components, hostField, portField } from "../../platform/config/components.js";
import { isEntryPoint, runMain, type Started } from "../../platform/lifecycle/run-main.js";
import { configureLogging, logger } from "../../platform/telemetry/logger.js";

export const configSpec = {
  MEDMESH_DATA_DIR: env.string("where embedded data lives", ".data"),
  ...hostField(components.smtp, "interface of the embedded SMTP sink"),
  ...portField(components.smtp, "port of the embedded SMTP sink"),
};

/**
 * Where mail goes under `npm start`: an SMTP server that accepts every message and keeps it as
 * one .eml file under MEDMESH_DATA_DIR/mailbox, named by arrival time so `ls` lists them in order.
 * A message is written to a temporary name and renamed once complete, so a reader never sees half
 * of one; the server answers 250 only after that, so nothing it accepted is lost.
 */
export async function startSmtpSink(source: Record<string, string | undefined> = process.env): Promise<Started> {
  const config = loadConfig(configSpec, source);
  configureLogging({ service: "smtp" });
  const log = logger.child({ component: "smtp" });
  const dir = config.MEDMESH_DATA_DIR === "memory://" ? undefined : path.resolve(config.MEDMESH_DATA_DIR, "mailbox");
  if (dir) mkdirSync(dir, { recursive: true });
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ["STARTTLS", "AUTH"],
    logger: false,
    size: 10 * 1024 * 1024,
    onData(stream, session, callback) {
      if (!dir) {
        stream.resume();
        stream.on("end", () => callback());
        return;
      }
      const name = `${new Date().toISOString().replace(/[:.]/g, "-")}-${randomUUID().slice(0, 8)}.eml`;
      const partial = path.join(dir, `.${name}.part`);
      pipeline(stream, createWriteStream(partial, { mode: 0o600 }))
        .then(() => rename(partial, path.join(dir, name)))
        .then(() => {
          log.info("mail kept", { file: name, to: session.envelope.rcptTo.map((r) => r.address).join(",") });
          callback();
        })
        .catch((err: Error) => callback(err));
    },
  });
  server.on("error", (err) => log.warn("smtp connection error", { error: err.message }));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(config.SMTP_SINK_PORT, config.SMTP_SINK_HOST, () => resolve());
  });
  const port = (server.server.address() as { port: number }).port;
  return {
    endpoints: { smtp: `smtp://${config.SMTP_SINK_HOST}:${port}`, ...(dir ? { mailbox: dir } : {}) },
    stop: () => new Promise<void>((r) => server.close(() => r())),
  };
}

if (isEntryPoint(import.meta.url)) void runMain("smtp", () => startSmtpSink());
