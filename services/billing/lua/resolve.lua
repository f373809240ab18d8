-- A hold captured, voided, expired or undone: drop it and post ARGV[2] (the captured amount).
-- KEYS[1] wallet hash, KEYS[2] holds hash. ARGV[1] hold id, ARGV[2] posted amount.
-- A wallet not loaded is left alone: the next operation rebuilds it from PostgreSQL.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local amount = redis.call('HGET', KEYS[2], ARGV[1])
if amount then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'held', -tonumber(amount))
end
redis.call('HINCRBY', KEYS[1], 'balance', -tonumber(ARGV[2]))
return 1
