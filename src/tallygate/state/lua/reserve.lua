-- All-or-nothing reservation, then the usage of the limits the caller reads.
-- KEYS[1] reservation record; then per hold: KEYS[2i] cells hash, KEYS[2i+1] leases zset;
--   then per read, cells hash and leases zset likewise.
-- ARGV: prefix, request id, now, expires, record ttl, hold count n; then per hold 8
--   values: key, metric, amount, limit, oldest window id, current window id, gc ttl,
--   window ("c:<window>" calendar/lifetime, "r:<window>" rolling: for extend.lua);
--   then per read 2 values: oldest window id, current window id.
-- The record keeps per line i: k key, m metric, c cells, z leases, w window id,
--   a amount, g gc ttl, l live, x limit, v window; and e, the lease end.
-- Returns {1, reads...} held, {2, reads...} already held, {3, state} already finished,
--   {0, hold index, used+reserved hi, lo, oldest non-empty window id} denied;
--   reads: 5 values per read, as read_usage() gives them, taken after the reservation.
local rec = KEYS[1]
local prefix, rid, now, expires = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = tonumber(ARGV[6])
local reads = (#KEYS - 1) / 2 - n
local state = redis.call("HGET", rec, "state")
if state then
  if state == "held" then return read_usage({2}, prefix, now, 2 + 2 * n, 7 + 8 * n, reads) end
  return {3, state}
end
for i = 1, n do
  local cell, leases = KEYS[2 * i], KEYS[2 * i + 1]
  local a = 6 + (i - 1) * 8
  local amount, limit = ARGV[a + 3], ARGV[a + 4]
  reclaim(prefix, cell, leases, now)
  local used, reserved, first = totals(cell, tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]))
  local total = add(used, reserved)
  if amount ~= "0" and gt(add(total, big(amount)), big(limit)) then
    return {0, i, total[1], total[2], first}
  end
end
local fields = {"state", "held", "n", tostring(n), "e", expires}
for i = 1, n do
  local cell, leases = KEYS[2 * i], KEYS[2 * i + 1]
  local a = 6 + (i - 1) * 8
  local amount, current, gc = ARGV[a + 3], ARGV[a + 6], ARGV[a + 7]
  if amount ~= "0" then redis.call("HINCRBY", cell, "r" .. current, amount) end
  redis.call("EXPIRE", cell, gc)
  redis.call("ZADD", leases, expires, rid)
  redis.call("EXPIRE", leases, gc)
  local s = tostring(i)
  local line = {"k" .. s, ARGV[a + 1], "m" .. s, ARGV[a + 2], "c" .. s, cell,
                "z" .. s, leases, "w" .. s, current, "a" .. s, amount, "g" .. s, gc,
                "l" .. s, "1", "x" .. s, ARGV[a + 4], "v" .. s, ARGV[a + 8]}
  for j = 1, #line do fields[#fields + 1] = line[j] end
end
redis.call("HSET", rec, unpack(fields))
redis.call("EXPIRE", rec, ARGV[5])
return read_usage({1}, prefix, now, 2 + 2 * n, 7 + 8 * n, reads)
