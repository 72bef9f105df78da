import { createServer } from "node:net";

/** The port a component binds, and the variable an operator changes to move it. */
export interface Listens {
  variable: string;
  host: string;
  /** 0 lets the component pick a free one; nothing to check then. */
  port: number;
}

export function portTakenMessage(component: string, l: Listens): string {
  return `${component}: port ${l.port} is taken (set ${l.variable} to another port)`;
}

/**
 * One sentence per port the mesh cannot have, found before anything is started: the embedded
 * Postgres would otherwise spend seconds opening its data before it finds out, with the services
 * started beside it. A component can still lose a race for its port; it then reports the same
 * sentence over IPC (component-process.ts).
 */
export async function unavailablePorts(components: Array<{ name: string; listens?: Listens }>): Promise<string[]> {
  const problems: string[] = [];
  const claimed = new Map<number, { name: string; listens: Listens }>();
  for (const { name, listens } of components) {
    if (!listens || listens.port === 0) continue;
    const other = claimed.get(listens.port);
    if (other) {
      problems.push(
        `${other.name} and ${name} are both given port ${listens.port} (set ${other.listens.variable} or ${listens.variable} to another port)`,
      );
      continue;
    }
    claimed.set(listens.port, { name, listens });
    // One at a time: probing the same port twice at once would find it taken by ourselves.
    const code = await tryListen(listens.host, listens.port);
    if (code === "EADDRINUSE") problems.push(portTakenMessage(name, listens));
    else if (code === "EACCES")
      problems.push(
        `${name}: port ${listens.port} needs privileges this process lacks (set ${listens.variable} to another port)`,
      );
    else if (code === "EADDRNOTAVAIL")
      problems.push(`${name}: this machine has no address ${listens.host} to bind port ${listens.port}`);
    else if (code) problems.push(`${name}: cannot listen on ${listens.host}:${listens.port} (${code})`);
  }
  return problems;
}

/** Binds and releases the port as the component will bind it; the error code if that fails. */
function tryListen(host: string, port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(undefined)));
  });
}
