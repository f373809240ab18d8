-- Forget leased jobs of one job type (finished, or their lease expired before a re-enqueue).
-- KEYS[1] job records hash. ARGV[1..] job ids. Only leased records are deleted. Returns the count.
local n = 0
for i = 1, #ARGV do
  local rec = redis.call('HGET', KEYS[1], ARGV[i])
  if rec and string.sub(rec, 1, 1) == 'L' then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
