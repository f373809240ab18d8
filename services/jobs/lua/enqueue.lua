-- Enqueue many jobs of one job type. KEYS[1] job records hash, KEYS[2] scheduled zset (both {jt:<type>}).
-- ARGV[1] key base "<prefix>{jt:<type>}", then per job 4 values: id, priority 1..4, customer, enqueued_at.
-- Idempotent per job id: a job already known (queued, scheduled or leased) is left alone.
-- Returns the number of jobs queued now.
local base = ARGV[1]
for i = 2, #ARGV, 4 do
  local p = tonumber(ARGV[i + 1])
  if p == nil or p < 1 or p > 4 or p % 1 ~= 0 or tonumber(ARGV[i + 3]) == nil then
    return redis.error_reply('INVALID_ARGUMENT bad priority or time for job ' .. ARGV[i])
  end
end
local added = 0
for i = 2, #ARGV, 4 do
  local id, p, cust, at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('HEXISTS', KEYS[1], id) == 0 then
    redis.call('ZADD', base .. ':q:' .. p .. ':' .. cust, at, id)
    redis.call('ZADD', base .. ':all:' .. p, at, id)
    if redis.call('SADD', base .. ':rrset:' .. p, cust) == 1 then
      redis.call('RPUSH', base .. ':rr:' .. p, cust)
    end
    redis.call('HSET', KEYS[1], id, 'Q|' .. p .. '|' .. cust)
    added = added + 1
  end
end
return added
