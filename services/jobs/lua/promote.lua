-- Move due scheduled jobs of one job type into their queues, at most ARGV[3] per call.
-- KEYS[1] job records hash, KEYS[2] scheduled zset. ARGV[1] key base, ARGV[2] now, ARGV[3] limit.
-- A promoted job is ordered in its customer's queue by its due time.
-- Returns {promoted count, next due time or nil}.
local base = ARGV[1]
local due = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[2], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]), 'WITHSCORES')
local promoted = 0
for i = 1, #due, 2 do
  local id, at = due[i], due[i + 1]
  redis.call('ZREM', KEYS[2], id)
  local rec = redis.call('HGET', KEYS[1], id)
  if rec then
    local state, p, cust = string.match(rec, '^(%a)|(%d)|([^|]*)')
    if state == 'S' then
      redis.call('ZADD', base .. ':q:' .. p .. ':' .. cust, at, id)
      redis.call('ZADD', base .. ':all:' .. p, at, id)
      if redis.call('SADD', base .. ':rrset:' .. p, cust) == 1 then
        redis.call('RPUSH', base .. ':rr:' .. p, cust)
      end
      redis.call('HSET', KEYS[1], id, 'Q|' .. p .. '|' .. cust)
      promoted = promoted + 1
    end
  end
end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {promoted, nxt[2] or false}
