-- Settle (charge actual usage, free the holds) or release (free the holds).
-- KEYS[1] reservation record (its holds name the cells and leases, same hash tag).
-- ARGV: mode "settle"|"release", request id, record ttl, tokens, requests, cost.
-- Returns {0} when not held (already finished, or unknown), else
--   {1, key1, amount1, metric1, key2, ...} for the caller to compute charge/overrun.
-- An expired hold not yet reclaimed is freed here; one already reclaimed is not freed
-- twice. Either way the actual usage is charged: the call happened.
local rec = KEYS[1]
if redis.call("HGET", rec, "state") ~= "held" then return {0} end
local settle = ARGV[1] == "settle"
local spent = {tokens = ARGV[4], requests = ARGV[5], cost = ARGV[6]}
local n = tonumber(redis.call("HGET", rec, "n"))
local out = {1}
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
  out[#out + 1] = line[1]
  out[#out + 1] = line[5]
  out[#out + 1] = line[6]
end
redis.call("HSET", rec, "state", settle and "settled" or "released")
redis.call("EXPIRE", rec, ARGV[3])
return out
