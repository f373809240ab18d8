-- Schedule many jobs of one job type for later. KEYS[1] job records hash, KEYS[2] scheduled zset.
-- ARGV[1] key base, then per job 4 values: id, priority 1..4, customer, due time.
-- A job that is unknown or leased (a retry waiting out its backoff) is scheduled; a queued or
-- already scheduled job is left alone. Returns the number scheduled now.
for i = 2, #ARGV, 4 do
  local p = tonumber(ARGV[i + 1])
  if p == nil or p < 1 or p > 4 or p % 1 ~= 0 or tonumber(ARGV[i + 3]) == nil then
    return redis.error_reply('INVALID_ARGUMENT bad priority or due time for job ' .. ARGV[i])
  end
end
local added = 0
for i = 2, #ARGV, 4 do
  local id, p, cust, due = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local rec = redis.call('HGET', KEYS[1], id)
  if not rec or string.sub(rec, 1, 1) == 'L' then
    redis.call('ZADD', KEYS[2], due, id)
    redis.call('HSET', KEYS[1], id, 'S|' .. p .. '|' .. cust)
    added = added + 1
  end
end
return added
