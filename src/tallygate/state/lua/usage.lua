-- Used and reserved of one limit now. KEYS: cells hash, leases zset.
-- ARGV: prefix, now, oldest window id, current window id.
-- Returns {used hi, used lo, reserved hi, reserved lo, oldest non-empty window id}.
reclaim(ARGV[1], KEYS[1], KEYS[2], ARGV[2])
local used, reserved, first = totals(KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]))
return {used[1], used[2], reserved[1], reserved[2], first}
