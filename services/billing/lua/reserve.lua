-- Open-to-Buy reserve. KEYS[1] wallet hash {c:<id>}:w (balance, held, limit), KEYS[2] holds hash {c:<id>}:h.
-- ARGV[1] hold id, ARGV[2] amount. Returns 1 if held now, 0 if the hold was already there.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('REBUILD wallet not loaded')
end
local amount = tonumber(ARGV[2])
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then
  return 0
end
local w = redis.call('HMGET', KEYS[1], 'balance', 'held', 'limit')
local available = tonumber(w[1]) - tonumber(w[2]) + tonumber(w[3])
if available < amount then
  return redis.error_reply('INSUFFICIENT_FUNDS available ' .. available .. ' < ' .. amount)
end
redis.call('HSET', KEYS[2], ARGV[1], amount)
redis.call('HINCRBY', KEYS[1], 'held', amount)
return 1
