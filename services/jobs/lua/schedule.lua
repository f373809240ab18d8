-- Schedule many jobs of one job type for later. KEYS[1] job records hash, KEYS[2] scheduled zset.
-- ARGV[1] key base, then per job 4 values: id, priority 1..4, customer, due time.
-- A job that is unknown or leased (a retry waiting out its backoff) is scheduled; a queued or
-- already scheduled job is left alone. Returns the number scheduled now.
-- The records are read and written with a command per thousand values, not two per job.
local ids = {}
for i = 2, #ARGV, 4 do
  local p = tonumber(ARGV[i + 1])
  if p == nil or p < 1 or p > 4 or p % 1 ~= 0 or tonumber(ARGV[i + 3]) == nil then
    return redis.error_reply('INVALID_ARGUMENT bad priority or due time for job ' .. ARGV[i])
  end
  ids[#ids + 1] = ARGV[i]
end
local known = hmget(KEYS[1], ids)
local due, records, seen, added = {}, {}, {}, 0
for k = 1, #ids do
  local i = 2 + (k - 1) * 4
  local id, p, cust, at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local rec = known[k]
  if (not rec or string.sub(rec, 1, 1) == 'L') and not seen[id] then
    seen[id] = true
    due[#due + 1] = at
    due[#due + 1] = id
    records[#records + 1] = id
    records[#records + 1] = 'S|' .. p .. '|' .. cust
    added = added + 1
  end
end
each('ZADD', KEYS[2], due)
each('HSET', KEYS[1], records)
return added
