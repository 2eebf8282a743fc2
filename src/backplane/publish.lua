-- Durable publish: one atomic step (DESIGN.md decision 5).
-- KEYS[1] meta hash {epoch, offset}   KEYS[2] history stream   KEYS[3] pub/sub channel
-- ARGV[1] the message frame without its closing brace
-- ARGV[2] history_size (MAXLEN ~)      ARGV[3] history_ttl in seconds
-- ARGV[4] a fresh epoch, used only when the channel has none (new, expired or lost)
-- Returns {epoch, offset}.
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
return {epoch, offset}
