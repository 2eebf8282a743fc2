-- Idempotent publish to a plain channel (PROTOCOL §3): the check and the publish are
-- one atomic step, so concurrent retries publish once.
-- KEYS[1] the idempotency record   KEYS[2] the pub/sub channel
-- ARGV[1] the message frame        ARGV[2] how long the record is kept, in ms
-- Returns "ok" (published), "dup" (published before, with the same data) or
-- "conflict" (the key was used with other data).
local digest = redis.sha1hex(ARGV[1])
local prev = redis.call('GET', KEYS[1])
if prev then
  if prev == digest then
    return 'dup'
  end
  return 'conflict'
end
redis.call('PUBLISH', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], digest, 'PX', ARGV[2])
return 'ok'
