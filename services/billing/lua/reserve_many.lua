-- Open-to-Buy reserve of many holds on one wallet (a batch submit, or single submits sharing a
-- commit). KEYS[1] wallet hash, KEYS[2] holds hash. ARGV: hold id, amount, hold id, amount, …
-- Each item is decided on its own, in order: 1 held now, 0 already held, -1 the wallet cannot
-- afford it (the items after it may still fit). A wallet not loaded answers REBUILD for all.
-- The holds are read and written with a command per thousand values, not two per hold.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('REBUILD wallet not loaded')
end
local ids = {}
for i = 1, #ARGV, 2 do ids[#ids + 1] = ARGV[i] end
local known = hmget(KEYS[2], ids)
local w = redis.call('HMGET', KEYS[1], 'balance', 'held', 'limit')
local available = tonumber(w[1]) - tonumber(w[2]) + tonumber(w[3])
local out, held, added, seen = {}, {}, 0, {}
for k = 1, #ids do
  local id, amount = ids[k], tonumber(ARGV[2 * k])
  if known[k] or seen[id] then
    out[k] = 0
  elseif available < amount then
    out[k] = -1
  else
    seen[id] = true
    held[#held + 1] = id
    held[#held + 1] = amount
    available = available - amount
    added = added + amount
    out[k] = 1
  end
end
each('HSET', KEYS[2], held)
if added ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'held', added)
end
return out
