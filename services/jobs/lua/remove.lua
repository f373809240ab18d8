-- Remove queued or scheduled jobs of one job type (cancel). KEYS[1] job records hash, KEYS[2] scheduled zset.
-- ARGV[1] key base, ARGV[2..] job ids. A leased job is left alone (the lease path cancels it).
-- O(log n) per job; a customer whose queue empties leaves the rotation at its next turn.
-- Returns the ids removed. The writes go as a command per key, not several per job.
local base = ARGV[1]
local out, seen, from, order = {}, {}, {}, {}
local function drop(key, id)  -- from `key`, with the others of this call
  local ids = group(from, order, key)
  ids[#ids + 1] = id
end
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
local records = hmget(KEYS[1], ids)
for k = 1, #ids do
  local id, rec = ids[k], records[k]
  if rec and not seen[id] then
    local state, p, cust = string.match(rec, '^(%a)|(%d)|([^|]*)')
    if state == 'Q' then
      drop(base .. ':q:' .. p .. ':' .. cust, id)
      drop(base .. ':all:' .. p, id)
    elseif state == 'S' then
      drop(KEYS[2], id)
    end
    if state == 'Q' or state == 'S' then
      seen[id] = true
      out[#out + 1] = id
    end
  end
end
for _, key in ipairs(order) do each('ZREM', key, from[key]) end
each('HDEL', KEYS[1], out)
return out
