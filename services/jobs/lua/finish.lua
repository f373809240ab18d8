-- Forget leased jobs of one job type (finished, or their lease expired before a re-enqueue).
-- KEYS[1] job records hash. ARGV[1..] job ids. Only leased records are deleted. Returns the count.
-- One HMGET and one HDEL per thousand ids (the prelude's `hmget` and `each`), not two calls per job.
local leased, seen = {}, {}
local records = hmget(KEYS[1], ARGV)
for k = 1, #ARGV do
  local id, rec = ARGV[k], records[k]
  if rec and string.sub(rec, 1, 1) == 'L' and not seen[id] then
    seen[id] = true
    leased[#leased + 1] = id
  end
end
each('HDEL', KEYS[1], leased)
return #leased
