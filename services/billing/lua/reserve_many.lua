-- Open-to-Buy reserve of many holds on one wallet (a batch submit, or single submits sharing a
-- commit). KEYS[1] wallet hash, KEYS[2] holds hash. ARGV: hold id, amount, hold id, amount, …
-- Each item is decided on its own, in order: 1 held now, 0 already held, -1 the wallet cannot
-- afford it (the items after it may still fit). A wallet not loaded answers REBUILD for all.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('REBUILD wallet not loaded')
end
local w = redis.call('HMGET', KEYS[1], 'balance', 'held', 'limit')
local available = tonumber(w[1]) - tonumber(w[2]) + tonumber(w[3])
local out, added = {}, 0
for i = 1, #ARGV, 2 do
  local amount = tonumber(ARGV[i + 1])
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then
    out[#out + 1] = 0
  elseif available < amount then
    out[#out + 1] = -1
  else
    redis.call('HSET', KEYS[2], ARGV[i], amount)
    available = available - amount
    added = added + amount
    out[#out + 1] = 1
  end
end
if added ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'held', added)
end
return out
