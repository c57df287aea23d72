-- Sends one fixed request, read from the file named by BENCH_REQUEST_FILE,
-- and prints a one-line JSON summary that bench/load.py parses.
--
-- File format: "METHOD /path" on the first line, then "Name: value" header
-- lines, an empty line, and the body (the rest of the file, byte for byte).
-- wrk adds Host and Content-Length itself.

local path = assert(os.getenv("BENCH_REQUEST_FILE"), "BENCH_REQUEST_FILE is not set")
local file = assert(io.open(path, "rb"))
local method, target = file:read("*l"):match("^(%u+) (%S+)$")
assert(method, "the first line of " .. path .. " must be 'METHOD /path'")

local headers = {}
for line in file:lines() do
  if line == "" then
    break
  end
  local name, value = line:match("^([^:]+):%s*(.*)$")
  assert(name, "invalid header line in " .. path .. ": " .. line)
  headers[name] = value
end
local body = file:read("*a")
file:close()

wrk.method = method
wrk.path = target
wrk.headers = headers
if body ~= "" then
  wrk.body = body
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, '
      .. '"status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
