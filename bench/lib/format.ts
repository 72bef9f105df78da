/** Progress for the person running a bench; results go to stdout and bench/results. */
export function say(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

/** A number for a results table: "-" when there was nothing to measure. */
export function fmt(n: number, digits = 1): string {
  return Number.isFinite(n) ? n.toFixed(digits) : "-";
}

export function mib(bytes: number | undefined): string {
  return bytes === undefined || !Number.isFinite(bytes) ? "-" : `${(bytes / 1024 / 1024).toFixed(0)} MiB`;
}
