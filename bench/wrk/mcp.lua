-- wrk script for the callwarden bench: POSTs one JSON-RPC body and prints a JSON summary line.
-- Configured by environment (wrk runs the script once per thread, before init):
--   BENCH_WRK_BODY    file with the body to POST         BENCH_WRK_HOST   Host header
--   BENCH_WRK_TOKEN   one bearer token for every request (a cached token)
--   BENCH_WRK_TOKENS  file of tokens, one a line: a different token on every request (first-seen
--                     tokens); BENCH_WRK_THREADS threads each walk their own stride of the file.
-- The request is static (built once by wrk) unless BENCH_WRK_TOKENS is set.

local threads = 0
local tokens_file = os.getenv("BENCH_WRK_TOKENS")

function setup(thread)
   thread:set("offset", threads)
   threads = threads + 1
end

function init(args)
   local file = assert(io.open(os.getenv("BENCH_WRK_BODY"), "rb"))
   wrk.method = "POST"
   wrk.body = file:read("*a")
   file:close()
   wrk.headers["Host"] = os.getenv("BENCH_WRK_HOST")
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Accept"] = "application/json, text/event-stream"
   local token = os.getenv("BENCH_WRK_TOKEN")
   if token and #token > 0 then
      wrk.headers["Authorization"] = "Bearer " .. token
   end
end

if tokens_file then
   local tokens = {}
   local counter = 0
   local stride = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")
   for line in io.lines(tokens_file) do
      if #line > 0 then tokens[#tokens + 1] = line end
   end

   function request()
      local index = (counter * stride + (offset or 0)) % #tokens + 1
      counter = counter + 1
      wrk.headers["Authorization"] = "Bearer " .. tokens[index]
      return wrk.format()
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
      '"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
