-- Removes sessions whose expiry passed (their node stopped refreshing them: it
-- crashed or was cut off) and returns them, atomically, so exactly one node learns of
-- each and sends its leave. KEYS as in presence_join.lua.
-- ARGV[1] now (ms)   ARGV[2] most sessions per call
-- Returns {session1, entry1, session2, entry2, ...}.
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, session in ipairs(expired) do
  local entry = redis.call('HGET', KEYS[1], session)
  redis.call('ZREM', KEYS[2], session)
  if entry then
    redis.call('HDEL', KEYS[1], session)
    local ok, decoded = pcall(cjson.decode, entry)
    local user = ok and type(decoded) == 'table' and decoded['user'] or nil
    if type(user) == 'string' and user ~= '' then
      if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
        redis.call('HDEL', KEYS[3], user)
      end
    end
    out[#out + 1] = session
    out[#out + 1] = entry
  end
end
return out
