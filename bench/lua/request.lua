-- One fixed request per thread, built once: wrk sends it as fast as the server answers.
-- Arguments (after `--`): METHOD PATH [BEARER_TOKEN [BODY]]. The summary is printed as one JSON
-- line after the marker, so the bench reads figures instead of parsing wrk's table.
local prepared

function init(args)
  local method, path, token, body = args[1], args[2], args[3], args[4]
  local headers = {}
  if token ~= nil and token ~= "" then headers["Authorization"] = "Bearer " .. token end
  if body ~= nil then headers["Content-Type"] = "application/json" end
  prepared = wrk.format(method, path, headers, body)
end

function request()
  return prepared
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '\nBENCH-JSON {"requests":%d,"durationUs":%d,"non2xx":%d,"connectErrors":%d,"readErrors":%d,' ..
    '"writeErrors":%d,"timeouts":%d,"p50Us":%d,"p90Us":%d,"p99Us":%d,"maxUs":%d}\n',
    summary.requests, summary.duration, errors.status, errors.connect, errors.read, errors.write,
    errors.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
