-- A session leaves a channel's presence. KEYS as in presence_join.lua.
-- ARGV[1] session   ARGV[2] user ("" for anonymous)
-- Returns 1 when the session was present (and so a leave is due).
local gone = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if gone == 1 and ARGV[2] ~= '' then
  if redis.call('HINCRBY', KEYS[3], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[3], ARGV[2])
  end
end
return gone
