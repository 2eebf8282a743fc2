-- Gives the lease up at a graceful stop, only if this node holds it.
-- KEYS[1] the lease   ARGV[1] this node
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
