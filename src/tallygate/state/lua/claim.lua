-- True (1) for exactly one caller per key until its ttl passes.
-- KEYS: claim key. ARGV: now, until, gc ttl in whole seconds.
local until_ = redis.call("GET", KEYS[1])
if until_ and tonumber(until_) > tonumber(ARGV[1]) then return 0 end
redis.call("SET", KEYS[1], ARGV[2], "EX", ARGV[3])
return 1
