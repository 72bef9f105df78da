-- One script for both Connect shapes: the harness passes method and body through the
-- environment, so the request wrk sends is exactly the one it verified beforehand.
local body = os.getenv("BENCH_BODY")
wrk.method = os.getenv("BENCH_METHOD") or "GET"
wrk.headers["Connect-Protocol-Version"] = "1"
local auth = os.getenv("BENCH_AUTHORIZATION")
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = auth
end
if body ~= nil and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

-- wrk's own report rounds percentiles to two digits in mixed units; one machine-readable line
-- with microseconds is easier to trust when parsed.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%.0f,"duration_us":%.0f,"non2xx":%.0f,"connect":%.0f,"read":%.0f,"write":%.0f,"timeout":%.0f,"p50_us":%.0f,"p99_us":%.0f,"max_us":%.0f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
