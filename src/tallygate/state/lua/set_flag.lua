-- KEYS: flags hash, version counter. ARGV: name, "1"|"0", pub/sub channel.
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
local version = redis.call("INCR", KEYS[2])
redis.call("PUBLISH", ARGV[3], ARGV[1])
return version
