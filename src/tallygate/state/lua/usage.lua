-- Used and reserved of one limit now. KEYS: cells hash, leases zset.
-- ARGV: prefix, now, oldest window id, current window id.
-- Returns {used hi, used lo, reserved hi, reserved lo, oldest non-empty window id}.
return read_usage({}, ARGV[1], ARGV[2], 1, 3, 1)
