-- Given to every script ahead of its own text (kit.redis.Scripts; Redis runs each script alone):
-- a batch's reads and writes as one command per key, a thousand values at a time, since a
-- script's cost is its redis.call()s and unpack() is bounded by Lua's C stack; and a batch's
-- values grouped by the key they go to, in the order the keys come.
local CHUNK = 1000
local function each(command, key, values)  -- `command key v1 v2 …` over all of `values`
  for s = 1, #values, CHUNK do
    redis.call(command, key, unpack(values, s, math.min(s + CHUNK - 1, #values)))
  end
end
local function hmget(key, fields)  -- the fields' values, in order, false where absent
  local out = {}
  for s = 1, #fields, CHUNK do
    local got = redis.call('HMGET', key, unpack(fields, s, math.min(s + CHUNK - 1, #fields)))
    for k = 1, #got do out[s + k - 1] = got[k] end
  end
  return out
end
local function group(groups, keys, key)  -- groups[key]; the first time a new list, its key added to `keys`
  local list = groups[key]
  if not list then
    list = {}
    groups[key] = list
    keys[#keys + 1] = key
  end
  return list
end
