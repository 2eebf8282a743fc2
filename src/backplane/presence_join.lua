-- A session enters a channel's presence.
-- KEYS[1] presence hash (session -> {"user","info"} JSON)
-- KEYS[2] expiry sorted set (session -> expiry, ms)
-- KEYS[3] user -> session count hash (for presence_stats)
-- ARGV[1] session   ARGV[2] entry JSON   ARGV[3] user ("" for anonymous)
-- ARGV[4] expiry (ms since the epoch)   ARGV[5] key TTL (ms)
-- Returns 1 when the session was not present before.
local new = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if new == 1 and ARGV[3] ~= '' then
  redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
return new
