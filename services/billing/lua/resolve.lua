-- Holds captured, voided, expired or undone: drop each and post its amount (what was captured).
-- KEYS[1] wallet hash, KEYS[2] holds hash. ARGV: hold id, posted amount, hold id, posted amount, …
-- (a batch of one wallet's captures is one call). A wallet not loaded is left alone: the next
-- operation rebuilds it from PostgreSQL. The holds are read and dropped with a command per
-- thousand ids, not two per hold.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local ids, posted = {}, 0
for i = 1, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  posted = posted + tonumber(ARGV[i + 1])
end
local held, gone, seen = 0, {}, {}
local amounts = hmget(KEYS[2], ids)
for k = 1, #ids do
  local id = ids[k]
  if amounts[k] and not seen[id] then
    seen[id] = true
    gone[#gone + 1] = id
    held = held + tonumber(amounts[k])
  end
end
each('HDEL', KEYS[2], gone)
if held ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'held', -held)
end
if posted ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'balance', -posted)
end
return 1
