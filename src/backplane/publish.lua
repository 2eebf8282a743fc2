-- Durable publish: one atomic step (docs/ARCHITECTURE.md decision 6).
-- KEYS[1] meta hash {epoch, offset}   KEYS[2] history stream   KEYS[3] pub/sub channel
-- KEYS[4] (optional) the idempotency record of this publish (PROTOCOL §3)
-- ARGV[1] the message frame without its closing brace
-- ARGV[2] history_size (MAXLEN ~)      ARGV[3] history_ttl in seconds
-- ARGV[4] a fresh epoch, used only when the channel has none (new, expired or lost)
-- ARGV[5] (with KEYS[4]) how long the idempotency record is kept, in ms
-- Returns {"ok", epoch, offset}, {"dup", epoch, offset} (the first publish's result)
-- or {"conflict"} (the key was used with other data).
local digest
if #KEYS >= 4 then
  digest = redis.sha1hex(ARGV[1])
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local d, e, o = string.match(prev, '^(%x+) (%S+) (%d+)$')
    if d == digest then
      return {'dup', e, tonumber(o)}
    end
    return {'conflict'}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[4]
  -- A stream without its meta belongs to a lost epoch: start the new one empty.
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local frame = ARGV[1] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}'
-- The entry id carries the offset, so a read "after offset N" is XRANGE (N-1 +.
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], offset .. '-1', 'f', frame)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], frame)
if digest then
  redis.call('SET', KEYS[4], digest .. ' ' .. epoch .. ' ' .. offset, 'PX', ARGV[5])
end
return {'ok', epoch, offset}
