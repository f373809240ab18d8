-- Holds captured, voided, expired or undone: drop each and post its amount (what was captured).
-- KEYS[1] wallet hash, KEYS[2] holds hash. ARGV: hold id, posted amount, hold id, posted amount, …
-- (a batch of one wallet's captures is one call). A wallet not loaded is left alone: the next
-- operation rebuilds it from PostgreSQL.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local held, posted = 0, 0
for i = 1, #ARGV, 2 do
  local amount = redis.call('HGET', KEYS[2], ARGV[i])
  if amount then
    redis.call('HDEL', KEYS[2], ARGV[i])
    held = held + tonumber(amount)
  end
  posted = posted + tonumber(ARGV[i + 1])
end
if held ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'held', -held)
end
if posted ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'balance', -posted)
end
return 1
