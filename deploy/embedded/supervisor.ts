import {
  forkComponent,
  hasExited,
  stopComponent,
  type ComponentProcess,
  type ComponentSpec,
  type Exit,
} from "./component-process.js";

export interface RestartPolicy {
  /** Delay before the first restart; each further one doubles it. */
  initialDelayMs: number;
  /** The delay stops growing here, and a component that keeps crashing is retried at this pace for good. */
  maxDelayMs: number;
  /** A component up this long since it became ready has recovered: its next crash starts over at initialDelayMs. */
  resetAfterMs: number;
}

export const defaultRestartPolicy: RestartPolicy = { initialDelayMs: 500, maxDelayMs: 30_000, resetAfterMs: 60_000 };

/**
 * Delay before restart number `attempt` (1-based): doubling from the initial delay up to the cap,
 * less up to a fifth at random, so components that crashed together (one OOM kill taking out
 * several, say) do not all come back in the same instant.
 */
export function restartDelay(attempt: number, policy: RestartPolicy, random: () => number = Math.random): number {
  const nominal = Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** Math.min(attempt - 1, 30));
  return Math.round(nominal * (1 - 0.2 * random()));
}

export type Log = (level: "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => void;

export interface SupervisorOptions {
  startupTimeoutMs: number;
  /** How long each component gets to stop on SIGTERM before it is killed. */
  stopBoundMs: number;
  policy?: RestartPolicy;
  log: Log;
}

interface Supervised {
  spec: ComponentSpec;
  process: ComponentProcess;
  /** Ready at least once: only then is an exit a crash to recover from rather than a failed launch. */
  everReady: boolean;
  readyAt?: number;
  endpoints?: Record<string, string>;
  /** Restarts since it last stayed up for resetAfterMs. */
  attempt: number;
  restartTimer?: NodeJS.Timeout;
}

/**
 * Keeps the embedded mesh's processes running. A component that exits after it was ready (a crash,
 * SIGKILL, the OOM killer) is started again after a backoff while the others carry on: their
 * clients reconnect by themselves, so dependents are left alone. It is never given up on; a
 * crash loop settles at one try per maxDelayMs, each logged. A component that fails before its
 * first ready is a failed launch instead, reported to whoever called start().
 */
export class Supervisor {
  private readonly components: Supervised[] = [];
  private readonly policy: RestartPolicy;
  private stopping = false;

  constructor(private readonly opts: SupervisorOptions) {
    this.policy = opts.policy ?? defaultRestartPolicy;
  }

  /** Starts a component and resolves with its endpoints once it is ready; rejects with a sentence if it is not. */
  async start(spec: ComponentSpec): Promise<Record<string, string>> {
    // A stop already under way has its list: a component started now would be left running.
    if (this.stopping) throw new Error(`${spec.name} not started: the mesh is stopping`);
    const supervised: Supervised = { spec, process: this.launch(spec), everReady: false, attempt: 0 };
    // Listed before it is ready, so a stop during the launch stops it too.
    this.components.push(supervised);
    this.watch(supervised);
    return await supervised.process.ready;
  }

  /** Current process ids by component name (they change with every restart). */
  pids(): Record<string, number | undefined> {
    return Object.fromEntries(this.components.map((s) => [s.spec.name, s.process.child.pid]));
  }

  /** Stops every component in reverse start order, each within the bound; nothing is restarted from here on. */
  async stopAll(): Promise<void> {
    this.stopping = true;
    for (const s of this.components) clearTimeout(s.restartTimer);
    for (const s of [...this.components].reverse()) await stopComponent(s.process, this.opts.stopBoundMs);
  }

  /** For an operator who asks twice: no more waiting on anyone. */
  killAll(): void {
    this.stopping = true;
    for (const s of this.components) {
      clearTimeout(s.restartTimer);
      if (!hasExited(s.process.child)) s.process.child.kill("SIGKILL");
    }
  }

  private launch(spec: ComponentSpec): ComponentProcess {
    return forkComponent(spec, this.opts.startupTimeoutMs);
  }

  private watch(s: Supervised): void {
    const current = s.process;
    const startedAt = performance.now();
    current.ready.then(
      (endpoints) => {
        s.readyAt = performance.now();
        if (s.everReady) {
          this.opts.log("info", "component restarted", {
            component: s.spec.name,
            attempt: s.attempt,
            pid: current.child.pid,
            ready_ms: Math.round(s.readyAt - startedAt),
          });
          // A component that came back elsewhere (it was given port 0) leaves its clients behind.
          if (JSON.stringify(endpoints) !== JSON.stringify(s.endpoints))
            this.opts.log("warn", "component restarted on a different address; its clients still use the old one", {
              component: s.spec.name,
              was: s.endpoints,
              now: endpoints,
            });
        } else {
          s.endpoints = endpoints;
        }
        s.everReady = true;
      },
      () => undefined, // the exit below says what happened
    );
    void current.exited.then((exit) => this.exited(s, current, exit));
  }

  private exited(s: Supervised, gone: ComponentProcess, exit: Exit): void {
    if (this.stopping || !s.everReady) return;
    const upMs = s.readyAt === undefined ? 0 : performance.now() - s.readyAt;
    // A restart that failed before becoming ready never reset the clock: it counts as one more try.
    if (s.readyAt !== undefined && upMs >= this.policy.resetAfterMs) s.attempt = 0;
    s.attempt += 1;
    s.readyAt = undefined;
    const delayMs = restartDelay(s.attempt, this.policy);
    this.opts.log("error", "component exited unexpectedly; restarting it", {
      component: s.spec.name,
      pid: gone.child.pid,
      code: exit.code,
      signal: exit.signal,
      ...(gone.failure() ? { error: gone.failure() } : {}),
      up_ms: Math.round(upMs),
      attempt: s.attempt,
      delay_ms: delayMs,
    });
    s.restartTimer = setTimeout(() => {
      s.restartTimer = undefined;
      if (this.stopping) return;
      s.process = this.launch(s.spec);
      this.watch(s);
    }, delayMs);
  }
}
