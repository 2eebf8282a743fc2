-- Takes or renews the lease of an ordered ingest source: one node at a time reads it.
-- KEYS[1] the lease   ARGV[1] this node   ARGV[2] lease time, ms
-- Returns 1 (renewed), 2 (newly taken) or 0 (another node holds it).
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
