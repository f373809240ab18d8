-- Remove queued or scheduled jobs of one job type (cancel). KEYS[1] job records hash, KEYS[2] scheduled zset.
-- ARGV[1] key base, ARGV[2..] job ids. A leased job is left alone (the lease path cancels it).
-- O(log n) per job; a customer whose queue empties leaves the rotation at its next turn.
-- Returns the ids removed.
local base = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local rec = redis.call('HGET', KEYS[1], id)
  if rec then
    local state, p, cust = string.match(rec, '^(%a)|(%d)|([^|]*)')
    if state == 'Q' then
      redis.call('ZREM', base .. ':q:' .. p .. ':' .. cust, id)
      redis.call('ZREM', base .. ':all:' .. p, id)
      redis.call('HDEL', KEYS[1], id)
      out[#out + 1] = id
    elseif state == 'S' then
      redis.call('ZREM', KEYS[2], id)
      redis.call('HDEL', KEYS[1], id)
      out[#out + 1] = id
    end
  end
end
return out
