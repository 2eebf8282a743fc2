-- One node refreshes all its local sessions of one channel in one call, and writes
-- back those that Redis lost (a restart without persistence). KEYS as in
-- presence_join.lua.
-- ARGV[1] expiry (ms)   ARGV[2] key TTL (ms)
-- then triples: session, entry JSON, user ("" for anonymous)
-- Returns how many sessions had to be written back.
local restored = 0
for i = 3, #ARGV, 3 do
  local session, entry, user = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HSET', KEYS[1], session, entry) == 1 then
    restored = restored + 1
    if user ~= '' then redis.call('HINCRBY', KEYS[3], user, 1) end
  end
  redis.call('ZADD', KEYS[2], ARGV[1], session)
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
return restored
