-- wrk script for the gstgate benchmark: one generate-IRN request, repeated.
--
-- Configured through the environment so the same script serves every target:
--   BENCH_BODY     path of the request body (sent as is)
--   BENCH_HEADERS  path of a file with one "Name: value" header per line (optional)
--   BENCH_DELAY_MS pause per connection between an answer and the next request (optional)
-- Example, by hand:
--   BENCH_BODY=body.json BENCH_HEADERS=headers.txt \
--     wrk -t1 -c64 -d10s --latency -s bench/generate-irn.lua http://127.0.0.1:8080/eicore/v1.03/Invoice
--
-- At the end it prints one machine-readable line (latencies in microseconds) that
-- benches/gateway/main.rs parses; wrk's own human-readable report is printed above it.

local function slurp(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local s = f:read("*a")
  f:close()
  return s
end

wrk.method = "POST"
wrk.body = slurp(assert(os.getenv("BENCH_BODY"), "BENCH_BODY is not set"))
wrk.headers["Content-Type"] = "application/json"

local header_file = os.getenv("BENCH_HEADERS")
if header_file and header_file ~= "" then
  for line in slurp(header_file):gmatch("[^\r\n]+") do
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then
      wrk.headers[name] = value
    end
  end
end

-- BENCH_DELAY_MS > 0: each connection waits that long between an answer and its next request
-- (a fixed offered load instead of as fast as possible; wrk excludes the pause from latency).
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0") or 0
if pause > 0 then
  delay = function() return pause end
end

done = function(summary, latency, requests)
  local e = summary.errors
  local function p(q) return math.floor(latency:percentile(q)) end
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d " ..
    "p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%.1f\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    p(50), p(90), p(99), p(99.9), math.floor(latency.max), latency.mean))
end
