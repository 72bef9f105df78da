// A small Prometheus text registry. The mesh needs a handful of RPC series and nothing more,
// which does not justify a metrics dependency in every process.

const buckets = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

interface Series {
  count: number;
  sum: number;
  buckets: number[];
}

const rpcCounts = new Map<string, number>();
const rpcDurations = new Map<string, Series>();

function labels(obj: Record<string, string>): string {
  return Object.entries(obj)
    .map(([k, v]) => `${k}="${v.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`)
    .join(",");
}

export function recordRpc(component: string, method: string, code: string, durationMs: number): void {
  rpcSeries(component, method).record(code, durationMs);
}

/** The series of one component's method; callers keep it so a finished call only counts. */
export interface RpcSeries {
  record(code: string, durationMs: number): void;
}

const seriesByKey = new Map<string, RpcSeries>();

export function rpcSeries(component: string, method: string): RpcSeries {
  const durKey = labels({ component, method });
  const known = seriesByKey.get(durKey);
  if (known) return known;
  let s = rpcDurations.get(durKey);
  if (!s) rpcDurations.set(durKey, (s = { count: 0, sum: 0, buckets: buckets.map(() => 0) }));
  const durations = s;
  const countKeys = new Map<string, string>();
  const series: RpcSeries = {
    record(code, durationMs) {
      let countKey = countKeys.get(code);
      if (countKey === undefined) countKeys.set(code, (countKey = labels({ component, method, code })));
      rpcCounts.set(countKey, (rpcCounts.get(countKey) ?? 0) + 1);
      durations.count++;
      durations.sum += durationMs;
      for (let i = 0; i < buckets.length; i++) if (durationMs <= buckets[i]!) durations.buckets[i]!++;
    },
  };
  seriesByKey.set(durKey, series);
  return series;
}

export function renderMetrics(): string {
  const out: string[] = [];
  out.push(
    "# HELP medmesh_rpc_requests_total RPCs finished, by status code.",
    "# TYPE medmesh_rpc_requests_total counter",
  );
  for (const [k, v] of rpcCounts) out.push(`medmesh_rpc_requests_total{${k}} ${v}`);
  out.push("# HELP medmesh_rpc_duration_ms RPC duration in milliseconds.", "# TYPE medmesh_rpc_duration_ms histogram");
  for (const [k, s] of rpcDurations) {
    buckets.forEach((b, i) => out.push(`medmesh_rpc_duration_ms_bucket{${k},le="${b}"} ${s.buckets[i]}`));
    out.push(`medmesh_rpc_duration_ms_bucket{${k},le="+Inf"} ${s.count}`);
    out.push(`medmesh_rpc_duration_ms_sum{${k}} ${s.sum}`, `medmesh_rpc_duration_ms_count{${k}} ${s.count}`);
  }
  out.push("# TYPE process_resident_memory_bytes gauge", `process_resident_memory_bytes ${process.memoryUsage.rss()}`);
  return out.join("\n") + "\n";
}
