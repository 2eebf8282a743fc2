-- A durable channel's position and history, read atomically.
-- KEYS[1] meta hash   KEYS[2] history stream
-- ARGV[1] a fresh epoch, used only when the channel has none
-- ARGV[2] history_ttl in seconds
-- ARGV[3] "none" (position only) | "after" | "newest"
-- ARGV[4] offset (for "after", exclusive)   ARGV[5] limit, 0 = no limit
-- Returns {epoch, offset, id1, frame1, id2, frame2, ...} in ascending order.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset'))
local out = {epoch, offset}
local limit = tonumber(ARGV[5])
local entries = {}
if ARGV[3] == 'after' then
  if limit > 0 then
    entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[4] .. '-1', '+', 'COUNT', limit)
  else
    entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[4] .. '-1', '+')
  end
elseif ARGV[3] == 'newest' then
  local rev
  if limit > 0 then
    rev = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', limit)
  else
    rev = redis.call('XREVRANGE', KEYS[2], '+', '-')
  end
  for i = #rev, 1, -1 do entries[#entries + 1] = rev[i] end
end
for _, e in ipairs(entries) do
  out[#out + 1] = e[1]
  out[#out + 1] = e[2][2]
end
return out
