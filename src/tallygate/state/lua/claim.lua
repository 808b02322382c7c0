-- True (1) for exactly one caller per key until its ttl passes. The value is
-- "<until> <token>": the winner's own call sent again (its reply lost with a dropped
-- connection, and retried) still wins; anyone else's loses until `until`.
-- KEYS: claim key. ARGV: now, until, gc ttl in whole seconds, the caller's token.
local held = redis.call("GET", KEYS[1])
if held then
  local until_, token = string.match(held, "^(%S+) ?(%S*)$")
  if token == ARGV[4] then return 1 end
  if tonumber(until_) > tonumber(ARGV[1]) then return 0 end
end
redis.call("SET", KEYS[1], ARGV[2] .. " " .. ARGV[4], "EX", ARGV[3])
return 1
