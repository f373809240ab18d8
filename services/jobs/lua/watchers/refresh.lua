-- A running watch keeps its slot: its expiry moves to now + life. Re-added if missing (a flushed
-- Redis), so the count recovers as running watches refresh.
-- KEYS[1] the customer's watch slots; ARGV[1] a slot's life in ms; ARGV[2] the watch's id
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local life = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now + life, ARGV[2])
redis.call('PEXPIRE', KEYS[1], life)
return 1
