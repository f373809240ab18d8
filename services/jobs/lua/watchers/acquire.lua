-- One more WatchJob stream for a customer, unless it already has its limit of live ones.
-- KEYS[1]  the customer's watch slots: zset watch id -> expiry (ms since the epoch, Redis's clock,
--          so every jobs replica judges expiry by the same time)
-- ARGV[1]  a slot's life in ms (its watch refreshes it while it runs)
-- ARGV[2]  the limit
-- ARGV[3]  this watch's id
-- Returns 1 when the slot is taken, 0 when the customer is at its limit (nothing changed but
-- the removal of expired slots, which belong to watches whose replica died).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local life = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + life, ARGV[3])
redis.call('PEXPIRE', KEYS[1], life)
return 1
