/** A whole-number knob from the environment; a bad value stops the bench with the reason. */
export function intFromEnv(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) {
    process.stderr.write(`bench: ${name}=${raw} must be an integer from ${min} to ${max}\n`);
    process.exit(2);
  }
  return n;
}
