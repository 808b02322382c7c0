-- Shared by every tallygate script (prepended when the script is loaded).
-- Exact integers: Redis Lua numbers are doubles (exact only below 2^53), so amounts stay
-- decimal strings in Redis (changed only by HINCRBY, 64-bit exact) and are compared here
-- as base-1e9 pairs {hi, lo}; both parts stay far below 2^53.
local BASE = 1000000000

local function big(s)
  if not s then return {0, 0} end
  local neg = string.sub(s, 1, 1) == "-"
  local digits = neg and string.sub(s, 2) or s
  local hi, lo = 0, 0
  if #digits > 9 then
    hi = tonumber(string.sub(digits, 1, -10))
    lo = tonumber(string.sub(digits, -9))
  else
    lo = tonumber(digits)
  end
  if neg then
    if lo > 0 then return {-hi - 1, BASE - lo} end
    return {-hi, 0}
  end
  return {hi, lo}
end

local function add(a, b)
  local hi, lo = a[1] + b[1], a[2] + b[2]
  if lo >= BASE then return {hi + 1, lo - BASE} end
  return {hi, lo}
end

local function gt(a, b)
  return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2])
end

-- Sum the cells ("u<window id>" used, "r<window id>" reserved) of hash `cell` whose
-- window id is in [oldest, current]; drop cells older than the window.
-- Returns used, reserved and the oldest non-empty window id (-1 when none).
local function totals(cell, oldest, current)
  local flat = redis.call("HGETALL", cell)
  local used, reserved, first = {0, 0}, {0, 0}, -1
  local stale = {}
  for i = 1, #flat, 2 do
    local field, value = flat[i], flat[i + 1]
    local wid = tonumber(string.sub(field, 2))
    if wid < oldest then
      stale[#stale + 1] = field
    elseif wid <= current then
      if string.sub(field, 1, 1) == "u" then
        used = add(used, big(value))
      else
        reserved = add(reserved, big(value))
      end
      if value ~= "0" and (first < 0 or wid < first) then first = wid end
    end
  end
  if #stale > 0 then redis.call("HDEL", cell, unpack(stale)) end
  return used, reserved, first
end

-- Give back the holds on `cell` whose lease (zset `leases`, score = expiry) ended at
-- `now`. Reservation records share the hash tag, so they are in this slot too.
local function reclaim(prefix, cell, leases, now)
  local expired = redis.call("ZRANGEBYSCORE", leases, "-inf", now)
  if #expired == 0 then return end
  for _, rid in ipairs(expired) do
    local rec = prefix .. ":res:" .. rid
    local n = tonumber(redis.call("HGET", rec, "n") or "0")
    for i = 1, n do
      local s = tostring(i)
      local line = redis.call("HMGET", rec, "c" .. s, "l" .. s, "w" .. s, "a" .. s)
      if line[1] == cell and line[2] == "1" then
        if line[4] ~= "0" then
          redis.call("HINCRBY", cell, "r" .. line[3], "-" .. line[4])
        end
        redis.call("HSET", rec, "l" .. s, "0")
      end
    end
  end
  redis.call("ZREMRANGEBYSCORE", leases, "-inf", now)
end

-- Append to `out` the usage of `count` limits, as usage.lua reports one: limit j has
-- cells KEYS[k + 2j], leases KEYS[k + 2j + 1] and oldest/current window ids
-- ARGV[a + 2j], ARGV[a + 2j + 1]. Per limit 5 values: used hi, used lo, reserved hi,
-- reserved lo, oldest non-empty window id (-1 when none). Lets an operation answer its
-- own reads in the same atomic script (one round trip).
local function read_usage(out, prefix, now, k, a, count)
  for j = 0, count - 1 do
    local cell, leases = KEYS[k + 2 * j], KEYS[k + 2 * j + 1]
    reclaim(prefix, cell, leases, now)
    local used, reserved, first = totals(cell, tonumber(ARGV[a + 2 * j]),
                                         tonumber(ARGV[a + 2 * j + 1]))
    local n = #out
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] =
      used[1], used[2], reserved[1], reserved[2], first
  end
  return out
end
