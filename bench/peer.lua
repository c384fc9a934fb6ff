-- wrk script for the benchmark's peer section (bench/peer.py).
--
-- Every request is one host pushing 10 values from an identity never used
-- before (a fleet's publish), either to Qasino's HTTP /request
-- (add_table_data, a 10-row table) or to a Prometheus Pushgateway
-- (POST /metrics/job/<job>/instance/<identity>, 10 samples).
--
-- wrk -t T -c 16 -d 3s -s bench/peer.lua URL -- MODE PREFIX NAME PAYLOAD
--   MODE     "qasino" or "pushgateway"
--   PREFIX   makes identities unique across runs ("r0_q")
--   NAME     qasino: the tablename; pushgateway: the job name
--   PAYLOAD  qasino: the JSON after the tablename (columns, types, rows, "}}");
--            pushgateway: the text-format body (10 sample lines)
--
-- The done() hook prints one line "PEER {json}" with wrk's counts and the
-- replies that were not acknowledgements (bench/peer.py parses it).

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1]
  prefix = args[2] .. "_" .. tostring(id) .. "_"
  name = args[3]
  payload = args[4]
  counter = 0
  acked = 0
  refused = 0
  if mode == "qasino" then
    head = '{"op":"add_table_data","identity":"'
    middle = '","table":{"tablename":"' .. name .. '"'
    headers = {["Content-Type"] = "application/json"}
  else
    headers = {["Content-Type"] = "text/plain; version=0.0.4"}
  end
end

function request()
  counter = counter + 1
  local identity = prefix .. tostring(counter)
  if mode == "qasino" then
    return wrk.format("POST", "/request", headers, head .. identity .. middle .. payload)
  end
  return wrk.format("POST", "/metrics/job/" .. name .. "/instance/" .. identity, headers, payload)
end

function response(status, headers, body)
  local ok
  if mode == "qasino" then
    ok = status == 200 and body:find('"response_op":"ok"', 1, true) ~= nil
  else
    ok = status == 200 or status == 202
  end
  if ok then
    acked = acked + 1
  else
    refused = refused + 1
  end
end

function done(summary, latency, requests)
  local acked_total, refused_total, sent_total = 0, 0, 0
  for _, thread in ipairs(threads) do
    acked_total = acked_total + thread:get("acked")
    refused_total = refused_total + thread:get("refused")
    sent_total = sent_total + thread:get("counter")
  end
  local e = summary.errors
  io.write(string.format(
    'PEER {"requests":%d,"acked":%d,"refused":%d,"sent":%d,"duration_us":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,' ..
    '"timeouts":%d,"latency_p50_us":%d,"latency_p99_us":%d}\n',
    summary.requests, acked_total, refused_total, sent_total, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
