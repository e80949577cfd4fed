-- wrk script of the bench: each connection replays its own list of requests, round robin, and the run ends
-- with one line "BENCH-JSON {...}" on stdout (counts, latency percentiles, statuses, error bodies).
-- Run with one connection per thread (wrk -t N -c N), so that thread i is connection i, from this directory.
-- Arguments after `--`: the requests file, the expected HTTP status.
-- Requests file: one request a line, tab-separated: connection index (from 0), method, path, body, chain, headers
-- ("Name: value", any number). A chain "key=token" (a connection that has it sends that one request) puts into
-- the body, in the token's place, the JSON member `key` of the last answer: each connection chains the refresh
-- tokens it is handed, as rotation (a refresh token used once) requires; an answer without one is a chain break.
-- Every request comes from another client address (X-Forwarded-For, which the gateway trusts as one proxy's): 512
-- per connection, so that each stays under the gateway's default limit of 100 a minute per address at any rate the
-- bench reaches, and each address's moving window stays as small as a real client's.
local json = require("json")

local threads, next_connection = {}, 0

function setup(thread)
  thread:set("connection", next_connection)
  next_connection = next_connection + 1
  table.insert(threads, thread)
end

local requests, turn = {}, 0
-- The chained request's body around its token, the answer's member that holds the next token, and the token.
local chain_key, chain_token, body_before, body_after

local function fields_of(line)
  local fields = {}
  for field in (line .. "\t"):gmatch("(.-)\t") do table.insert(fields, field) end
  return fields
end

function init(args)
  expected = tonumber(args[2])
  statuses, bodies, chain_breaks = {}, {}, 0
  for line in io.lines(args[1]) do
    local fields = fields_of(line)
    if tonumber(fields[1]) == connection then
      local headers = {}
      for i = 6, #fields do
        local name, value = fields[i]:match("^([^:]+):%s*(.*)$")
        headers[name] = value
      end
      local body = fields[4] ~= "" and fields[4] or nil
      table.insert(requests, {method = fields[2], path = fields[3], headers = headers, body = body})
      if fields[5] ~= "" then
        chain_key, chain_token = fields[5]:match("^([^=]+)=(.+)$")
        local first, last = body:find(chain_token, 1, true)
        body_before, body_after = body:sub(1, first - 1), body:sub(last + 1)
      end
    end
  end
  if #requests == 0 then error("no requests for connection " .. connection) end
end

local sent = 0

function request()
  turn = turn % #requests + 1
  sent = sent + 1
  local r = requests[turn]
  r.headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", connection, math.floor(sent / 256) % 2, sent % 256)
  local body = chain_key and (body_before .. chain_token .. body_after) or r.body
  return wrk.format(r.method, r.path, r.headers, body)
end

function response(status, headers, body)
  if chain_key then
    local next_token = status == 200 and body:match('"' .. chain_key .. '"%s*:%s*"([%w%-_%.]+)"')
    if next_token then chain_token = next_token else chain_breaks = chain_breaks + 1 end
  end
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  -- Error bodies tell apart answers of one status (a wrong password from a locked account).
  if status >= 300 then
    local sample = key .. " " .. body:sub(1, 100):gsub("%s+$", "")
    bodies[sample] = (bodies[sample] or 0) + 1
  end
end

local function add_counts(into, counts)
  for key, count in pairs(counts) do into[key] = (into[key] or 0) + count end
end

function done(summary, latency, requests)
  local all_statuses, all_bodies, all_chain_breaks = {}, {}, 0
  for _, thread in ipairs(threads) do
    add_counts(all_statuses, thread:get("statuses"))
    add_counts(all_bodies, thread:get("bodies"))
    all_chain_breaks = all_chain_breaks + thread:get("chain_breaks")
  end
  local percentiles = {}
  for _, p in ipairs({50, 90, 99, 99.9}) do percentiles["p" .. p] = latency:percentile(p) / 1000 end
  percentiles.max = latency.max / 1000
  io.write("BENCH-JSON ", json.encode({
    requests = summary.requests,
    seconds = summary.duration / 1e6,
    latency_ms = percentiles,
    socket_errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    statuses = all_statuses,
    bodies = all_bodies,
    chain_breaks = all_chain_breaks,
  }), "\n")
end
