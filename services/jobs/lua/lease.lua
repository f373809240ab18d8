-- Pop up to ARGV[3] jobs of one job type from its priority classes, in the order given. KEYS[1] job
-- records hash. ARGV[1] key base, ARGV[2] the classes as digits, highest first ("4321": all of them,
-- strict priority, so a one-type lease is this one call; "3": one class), ARGV[3] max, ARGV[4]
-- customer ('' = any), ARGV[5] now. A class is served until it is empty or max is reached, then the next.
-- Any customer: round robin over the class's customer rotation (pop the head customer's oldest job,
-- move the customer to the tail, or drop it when its queue is empty). A customer-scoped runner
-- takes that customer's oldest jobs. Each pop is O(log n). Returns the leased job ids in order.
-- A rotation of one customer (and a customer-scoped lease) pops its jobs in one ZPOPMIN, and the
-- popped jobs' class and records are written once per call: a script's cost is its redis.call()s.
local base, classes, max, only, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
if not string.match(classes, '^[1-4]+$') or max == nil then
  return redis.error_reply('INVALID_ARGUMENT classes must be digits 1..4 and max a number')
end
local out, records = {}, {}
local function take(p, got, cust, popped)  -- got: ZPOPMIN's reply, member then score
  for k = 1, #got, 2 do
    local id = got[k]
    out[#out + 1] = id
    popped[#popped + 1] = id
    records[#records + 1] = id
    records[#records + 1] = 'L|' .. p .. '|' .. cust .. '|' .. now
  end
end
for c = 1, #classes do
  if #out >= max then break end
  local p = string.sub(classes, c, c)
  local rr, rrset, all = base .. ':rr:' .. p, base .. ':rrset:' .. p, base .. ':all:' .. p
  local popped = {}
  if only ~= '' then
    take(p, redis.call('ZPOPMIN', base .. ':q:' .. p .. ':' .. only, max - #out), only, popped)
  else
    local waiting = redis.call('LLEN', rr)
    while #out < max and waiting > 0 do
      if waiting == 1 then  -- one customer in the rotation: its jobs at once
        local cust = redis.call('LINDEX', rr, 0)
        local q = base .. ':q:' .. p .. ':' .. cust
        take(p, redis.call('ZPOPMIN', q, max - #out), cust, popped)
        if redis.call('EXISTS', q) == 0 then
          redis.call('LPOP', rr)
          redis.call('SREM', rrset, cust)
        end
        break
      end
      local cust = redis.call('LPOP', rr)
      local q = base .. ':q:' .. p .. ':' .. cust
      take(p, redis.call('ZPOPMIN', q), cust, popped)
      if redis.call('EXISTS', q) == 1 then
        redis.call('RPUSH', rr, cust)
      else
        redis.call('SREM', rrset, cust)
        waiting = waiting - 1
      end
    end
  end
  each('ZREM', all, popped)
end
each('HSET', KEYS[1], records)
return out
