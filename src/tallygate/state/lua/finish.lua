-- Settle (charge actual usage, free the holds) or release (free the holds), then the
-- usage of the limits the caller reads.
-- KEYS[1] reservation record (its holds name the cells and leases, same hash tag);
--   then per read: cells hash, leases zset.
-- ARGV: mode "settle"|"release", request id, record ttl, tokens, requests, cost, prefix,
--   now; then per read 2 values: oldest window id, current window id.
-- Returns {status, reads..., lines...}: status 0 when not held (already finished, or
--   unknown; no lines), 1 when finished now; reads: 5 values per read, as read_usage()
--   gives them, taken after the operation; lines: key, amount, metric per hold, for the
--   caller to compute charge/overrun.
-- An expired hold not yet reclaimed is freed here; one already reclaimed is not freed
-- twice. Either way the actual usage is charged: the call happened.
local rec = KEYS[1]
local reads = (#KEYS - 1) / 2
if redis.call("HGET", rec, "state") ~= "held" then
  return read_usage({0}, ARGV[7], ARGV[8], 2, 9, reads)
end
local settle = ARGV[1] == "settle"
local spent = {tokens = ARGV[4], requests = ARGV[5], cost = ARGV[6]}
local n = tonumber(redis.call("HGET", rec, "n"))
local lines = {}
for i = 1, n do
  local s = tostring(i)
  local line = redis.call("HMGET", rec, "k" .. s, "c" .. s, "z" .. s, "w" .. s,
                          "a" .. s, "m" .. s, "l" .. s, "g" .. s)
  local cell = line[2]
  if line[7] == "1" then
    if line[5] ~= "0" then redis.call("HINCRBY", cell, "r" .. line[4], "-" .. line[5]) end
    redis.call("ZREM", line[3], ARGV[2])
    redis.call("HSET", rec, "l" .. s, "0")
  end
  local v = spent[line[6]] or "0"
  if settle and v ~= "0" then
    redis.call("HINCRBY", cell, "u" .. line[4], v)
    redis.call("EXPIRE", cell, line[8])
  end
  lines[#lines + 1] = line[1]
  lines[#lines + 1] = line[5]
  lines[#lines + 1] = line[6]
end
redis.call("HSET", rec, "state", settle and "settled" or "released")
redis.call("EXPIRE", rec, ARGV[3])
local out = read_usage({1}, ARGV[7], ARGV[8], 2, 9, reads)
for j = 1, #lines do out[#out + 1] = lines[j] end
return out
