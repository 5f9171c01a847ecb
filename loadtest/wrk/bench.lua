-- The requests of `iotctl bench` (loadtest/bench.py), and its results as JSON.
--
-- Parameters come from the environment (the setup/done environment and every thread's read
-- the same variables):
--   BENCH_METHOD, BENCH_PATH   what to send ("GET" "/ping", "POST" "/sensors", ...)
--   BENCH_TOKENS               a file with one bearer token per line; requests rotate through
--                              them (nginx rate-limits per credential)
--   BENCH_BATCH, BENCH_BASE    POST /sensors: readings per request, first timestamp (epoch s)
--   BENCH_RESULT               where done() writes the results as one JSON object
-- Every reading gets a unique (sensor, ts) per thread, so Postgres never deduplicates it away:
-- sensor = "bench_t<thread>", ts = base + counter microseconds.

local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/ping"
local batch = tonumber(os.getenv("BENCH_BATCH") or "1")
local base = tonumber(os.getenv("BENCH_BASE") or "0")
local tokens, threads, created = {}, {}, 0
local n, counter = 0, 0
statuses = {}  -- a global: done() reads each thread's with thread:get

function setup(thread)
  created = created + 1
  thread:set("tid", created)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(os.getenv("BENCH_TOKENS")) do
    if line ~= "" then table.insert(tokens, line) end
  end
  if #tokens == 0 then error("BENCH_TOKENS names a file without tokens") end
end

function request()
  n = n + 1
  local headers = {["Authorization"] = "Bearer " .. tokens[(n + tid) % #tokens + 1]}
  if method == "GET" then return wrk.format("GET", path, headers) end
  headers["Content-Type"] = "application/json"
  local parts = {}
  for i = 1, batch do
    counter = counter + 1
    local stamp = os.date("!%Y-%m-%dT%H:%M:%S", base + math.floor(counter / 1000000))
    parts[i] = string.format('{"sensor":"bench_t%d","value":%d.0,"ts":"%s.%06dZ"}',
                             tid, i, stamp, counter % 1000000)
  end
  return wrk.format(method, path, headers, '{"readings":[' .. table.concat(parts, ",") .. ']}')
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for code, count in pairs(t:get("statuses")) do total[code] = (total[code] or 0) + count end
  end
  local codes = {}
  for code, count in pairs(total) do
    table.insert(codes, string.format('"%d":%d', code, count))
  end
  local e = summary.errors
  local out = assert(io.open(os.getenv("BENCH_RESULT"), "w"))
  out:write(string.format(
    '{"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.3f,"max":%d,"stdev":%.3f,' ..
    '"p50":%d,"p75":%d,"p90":%d,"p99":%d},"statuses":{%s}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), table.concat(codes, ",")))
  out:close()
end
