-- Grow a held reservation (StateStore.extend): every line of a metric with growth holds
-- that much more, all lines or none, only where the limit has room; the lease is renewed.
-- KEYS[1] reservation record (its lines name their cells and leases, same hash tag).
-- ARGV: prefix, request id, now, new lease end, record ttl, growth of tokens, requests,
--   cost; then per window minute, hour, day, month (12 values): the oldest and current
--   slot of the rolling window at now, and the calendar bucket at now.
-- A calendar line whose bucket is no longer the current one is not checked: its window
-- ended, that bucket is closed (settle still charges it). Lifetime lines: bucket 0.
-- Returns {1} grown; {4, state} not held (state "unknown", "settled", "released" or
--   "expired"); {0, key, limit, window, metric, used+reserved hi, lo, oldest non-empty
--   window id, growth} refused (window as the record's "v" field has it).
local rec = KEYS[1]
local prefix, rid, now, expires = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local state = redis.call("HGET", rec, "state")
if not state then return {4, "unknown"} end
if state ~= "held" then return {4, state} end
local until_ = redis.call("HGET", rec, "e")
if not until_ then return {4, "unknown"} end  -- reserved before extend existed
local n = tonumber(redis.call("HGET", rec, "n"))
if tonumber(until_) <= tonumber(now) then return {4, "expired"} end
local more = {tokens = ARGV[6], requests = ARGV[7], cost = ARGV[8]}
local windows = {minute = 9, hour = 12, day = 15, month = 18}
local lines = {}
for i = 1, n do
  local s = tostring(i)
  local line = redis.call("HMGET", rec, "c" .. s, "z" .. s, "w" .. s, "m" .. s, "x" .. s,
                          "v" .. s, "k" .. s, "g" .. s)
  lines[i] = line
  local grow = more[line[4]] or "0"
  if grow ~= "0" then
    local cell, wid = line[1], tonumber(line[3])
    local at = windows[string.sub(line[6], 3)]
    local rolling = string.sub(line[6], 1, 2) == "r:"
    local oldest, current = 0, 0  -- the lifetime window: one bucket
    if rolling then  -- a rolling window: as it is now
      oldest, current = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
    elseif at then  -- a calendar window: the bucket at now
      oldest, current = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 2])
    end
    if rolling or wid == current then  -- (else its calendar window ended)
      reclaim(prefix, cell, line[2], now)  -- other expired leases give their room back
      local used, reserved, first = totals(cell, oldest, current)
      local total = add(used, reserved)
      if gt(add(total, big(grow)), big(line[5])) then
        return {0, line[7], line[5], line[6], line[4], total[1], total[2], first, grow}
      end
    end
  end
end
for i = 1, n do
  local s, line = tostring(i), lines[i]
  local grow = more[line[4]] or "0"
  if grow ~= "0" then
    redis.call("HINCRBY", line[1], "r" .. line[3], grow)
    redis.call("HINCRBY", rec, "a" .. s, grow)
  end
  redis.call("EXPIRE", line[1], line[8])
  redis.call("ZADD", line[2], expires, rid)
  redis.call("EXPIRE", line[2], line[8])
end
redis.call("HSET", rec, "e", expires)
redis.call("EXPIRE", rec, ARGV[5])
return {1}
