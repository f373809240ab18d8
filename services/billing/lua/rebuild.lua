-- Replace (ARGV[1] = "1") or load if absent (ARGV[1] = "0") a wallet's projection from PostgreSQL.
-- KEYS[1] wallet hash, KEYS[2] holds hash. ARGV: force, balance, held, limit, then hold id, amount pairs.
-- Returns 1 if written, 0 if a lazy load found the wallet already loaded by a concurrent caller.
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'balance', ARGV[2], 'held', ARGV[3], 'limit', ARGV[4])
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
