import { fork } from "node:child_process";
import { fileURLToPath } from "node:url";

/**
 * A load generator runs in a process of its own so that its CPU is its own, apart from the bench
 * that drives it and the mesh it loads. `inOwnProcess` forks the generator's module with `flag` and
 * hands it `input`; the module, started with that flag, answers through `serveInOwnProcess`.
 */
export async function inOwnProcess<I, O>(moduleUrl: string, flag: string, input: I): Promise<O> {
  const child = fork(fileURLToPath(moduleUrl), [flag], {
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const out = await new Promise<O>((resolve, reject) => {
    child.once("message", (m: O) => resolve(m));
    child.once("exit", (code, signal) => reject(new Error(`load process exited (${signal ?? `code ${code}`})`)));
    child.send(input as object);
  });
  child.disconnect();
  return out;
}

/** In the forked module: when started with `flag`, runs `main` on the input it is sent and sends back its answer. */
export function serveInOwnProcess<I, O>(flag: string, main: (input: I) => Promise<O>): void {
  if (!process.argv.includes(flag)) return;
  process.once("message", (input: I) => {
    main(input).then(
      (out) => process.send!(out as object),
      (err: Error) => {
        console.error(err);
        process.exit(1);
      },
    );
  });
}
