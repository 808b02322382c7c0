-- KEYS: flags hash, version counter. ARGV: name, pub/sub channel.
-- Returns 1 when a run-time flag was removed, 0 when none was set.
local found = redis.call("HDEL", KEYS[1], ARGV[1])
redis.call("INCR", KEYS[2])
redis.call("PUBLISH", ARGV[2], ARGV[1])
return found
