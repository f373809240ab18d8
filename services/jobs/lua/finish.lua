-- Forget leased jobs of one job type (finished, or their lease expired before a re-enqueue).
-- KEYS[1] job records hash. ARGV[1..] job ids. Only leased records are deleted. Returns the count.
-- One HMGET and one HDEL per thousand ids, not two calls per job.
local CHUNK = 1000
local leased, seen = {}, {}
for s = 1, #ARGV, CHUNK do
  local last = math.min(s + CHUNK - 1, #ARGV)
  local got = redis.call('HMGET', KEYS[1], unpack(ARGV, s, last))
  for k = 1, #got do
    local id, rec = ARGV[s + k - 1], got[k]
    if rec and string.sub(rec, 1, 1) == 'L' and not seen[id] then
      seen[id] = true
      leased[#leased + 1] = id
    end
  end
end
for s = 1, #leased, CHUNK do
  redis.call('HDEL', KEYS[1], unpack(leased, s, math.min(s + CHUNK - 1, #leased)))
end
return #leased
