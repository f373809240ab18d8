-- A wallet's projection for reconciliation: {exists, balance, held, limit, {hold id, amount, ...}}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, 0, 0, 0, {}}
end
local w = redis.call('HMGET', KEYS[1], 'balance', 'held', 'limit')
return {1, tonumber(w[1]), tonumber(w[2]), tonumber(w[3]), redis.call('HGETALL', KEYS[2])}
