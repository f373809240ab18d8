-- Funds posted to a wallet. KEYS[1] wallet hash. ARGV[1] amount. A wallet not loaded is left alone.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'balance', tonumber(ARGV[1]))
return 1
