-- Move due scheduled jobs of one job type into their queues, at most ARGV[3] per call.
-- KEYS[1] job records hash, KEYS[2] scheduled zset. ARGV[1] key base, ARGV[2] now, ARGV[3] limit.
-- A promoted job is ordered in its customer's queue by its due time.
-- Returns {promoted count, next due time or nil}. The writes go as a command per key (a
-- customer's queue, a class, the records), not several per job.
local base = ARGV[1]
local CHUNK = 1000  -- values per command: unpack() is bounded by Lua's C stack
local function each(command, key, values)
  for s = 1, #values, CHUNK do
    redis.call(command, key, unpack(values, s, math.min(s + CHUNK - 1, #values)))
  end
end
local due = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[2], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]), 'WITHSCORES')
local ids = {}
for i = 1, #due, 2 do ids[#ids + 1] = due[i] end
each('ZREM', KEYS[2], ids)
local known = {}
for s = 1, #ids, CHUNK do
  local got = redis.call('HMGET', KEYS[1], unpack(ids, s, math.min(s + CHUNK - 1, #ids)))
  for k = 1, #got do known[s + k - 1] = got[k] end
end
local queues, classes, order, records, promoted = {}, {}, {}, {}, 0
for k = 1, #ids do
  local id, at, rec = ids[k], due[2 * k], known[k]
  if rec then
    local state, p, cust = string.match(rec, '^(%a)|(%d)|([^|]*)')
    if state == 'S' then
      local q = base .. ':q:' .. p .. ':' .. cust
      if not queues[q] then
        queues[q] = {}
        order[#order + 1] = {q, p, cust}  -- a new customer joins its class's rotation in due order
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
      promoted = promoted + 1
    end
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
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {promoted, nxt[2] or false}
