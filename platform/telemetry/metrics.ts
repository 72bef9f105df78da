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
  const countKey = labels({ component, method, code });
  rpcCounts.set(countKey, (rpcCounts.get(countKey) ?? 0) + 1);
  const durKey = labels({ component, method });
  let s = rpcDurations.get(durKey);
  if (!s) rpcDurations.set(durKey, (s = { count: 0, sum: 0, buckets: buckets.map(() => 0) }));
  s.count++;
  s.sum += durationMs;
  buckets.forEach((b, i) => {
    if (durationMs <= b) s!.buckets[i]!++;
  });
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
