-- Pop up to ARGV[3] jobs of one job type from its priority classes, in the order given. KEYS[1] job
-- records hash. ARGV[1] key base, ARGV[2] the classes as digits, highest first ("4321": all of them,
-- strict priority, so a one-type lease is this one call; "3": one class), ARGV[3] max, ARGV[4]
-- customer ('' = any), ARGV[5] now. A class is served until it is empty or max is reached, then the next.
-- Any customer: round robin over the class's customer rotation (pop the head customer's oldest job,
-- move the customer to the tail, or drop it when its queue is empty). A customer-scoped runner
-- takes that customer's oldest jobs. Each pop is O(log n). Returns the leased job ids in order.
local base, classes, max, only, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
if not string.match(classes, '^[1-4]+$') or max == nil then
  return redis.error_reply('INVALID_ARGUMENT classes must be digits 1..4 and max a number')
end
local out = {}
local function mark(p, all, id, cust)
  redis.call('ZREM', all, id)
  redis.call('HSET', KEYS[1], id, 'L|' .. p .. '|' .. cust .. '|' .. now)
  out[#out + 1] = id
end
for c = 1, #classes do
  if #out >= max then break end
  local p = string.sub(classes, c, c)
  local rr, rrset, all = base .. ':rr:' .. p, base .. ':rrset:' .. p, base .. ':all:' .. p
  if only ~= '' then
    local q = base .. ':q:' .. p .. ':' .. only
    while #out < max do
      local got = redis.call('ZPOPMIN', q)
      if #got == 0 then break end
      mark(p, all, got[1], only)
    end
  else
    while #out < max do
      local cust = redis.call('LPOP', rr)
      if not cust then break end
      local q = base .. ':q:' .. p .. ':' .. cust
      local got = redis.call('ZPOPMIN', q)
      if #got > 0 then mark(p, all, got[1], cust) end
      if redis.call('EXISTS', q) == 1 then
        redis.call('RPUSH', rr, cust)
      else
        redis.call('SREM', rrset, cust)
      end
    end
  end
end
return out
