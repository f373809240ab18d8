-- Enqueue many jobs of one job type. KEYS[1] job records hash, KEYS[2] scheduled zset (both {jt:<type>}).
-- ARGV[1] key base "<prefix>{jt:<type>}", then per job 4 values: id, priority 1..4, customer, enqueued_at.
-- Idempotent per job id: a job already known (queued, scheduled or leased) is left alone.
-- Returns the number of jobs queued now.
-- The writes go as one command per key (a customer's queue, a class, the records), not one per
-- job: a script's cost is mostly its redis.call()s, and a batch of 1,000 made 5,000 of them.
local base = ARGV[1]
local ids = {}
for i = 2, #ARGV, 4 do
  local p = tonumber(ARGV[i + 1])
  if p == nil or p < 1 or p > 4 or p % 1 ~= 0 or tonumber(ARGV[i + 3]) == nil then
    return redis.error_reply('INVALID_ARGUMENT bad priority or time for job ' .. ARGV[i])
  end
  ids[#ids + 1] = ARGV[i]
end
local CHUNK = 1000  -- values per command: unpack() is bounded by Lua's C stack
local function each(command, key, values)
  for s = 1, #values, CHUNK do
    redis.call(command, key, unpack(values, s, math.min(s + CHUNK - 1, #values)))
  end
end
local known = {}
for s = 1, #ids, CHUNK do
  local got = redis.call('HMGET', KEYS[1], unpack(ids, s, math.min(s + CHUNK - 1, #ids)))
  for k = 1, #got do known[s + k - 1] = got[k] end
end
local seen, queues, classes, order, records = {}, {}, {}, {}, {}
local added = 0
for k = 1, #ids do
  local i = 2 + (k - 1) * 4
  local id, p, cust, at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if not known[k] and not seen[id] then
    seen[id] = true
    local q = base .. ':q:' .. p .. ':' .. cust
    if not queues[q] then
      queues[q] = {}
      order[#order + 1] = {q, p, cust}  -- a new customer joins its class's rotation in arrival order
    end
    local members = queues[q]
    members[#members + 1] = at
    members[#members + 1] = id
    classes[p] = classes[p] or {}
    local all = classes[p]
    all[#all + 1] = at
    all[#all + 1] = id
    records[#records + 1] = id
    records[#records + 1] = 'Q|' .. p .. '|' .. cust
    added = added + 1
  end
end
for _, entry in ipairs(order) do
  local q, p, cust = entry[1], entry[2], entry[3]
  each('ZADD', q, queues[q])
  if redis.call('SADD', base .. ':rrset:' .. p, cust) == 1 then
    redis.call('RPUSH', base .. ':rr:' .. p, cust)
  end
end
for p = 1, 4 do
  local all = classes[tostring(p)]
  if all then each('ZADD', base .. ':all:' .. p, all) end
end
each('HSET', KEYS[1], records)
return added
