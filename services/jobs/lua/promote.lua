-- Move due scheduled jobs of one job type into their queues, at most ARGV[3] per call.
-- KEYS[1] job records hash, KEYS[2] scheduled zset. ARGV[1] key base, ARGV[2] now, ARGV[3] limit.
-- A promoted job is ordered in its customer's queue by its due time.
-- Returns {promoted count, next due time or nil}. The writes go as a command per key
-- (`queue_jobs`, in _queued.lua), not several per job.
local base = ARGV[1]
local due = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[2], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]), 'WITHSCORES')
local ids = {}
for i = 1, #due, 2 do ids[#ids + 1] = due[i] end
each('ZREM', KEYS[2], ids)
local known = hmget(KEYS[1], ids)
local jobs = {}
for k = 1, #ids do
  local rec = known[k]
  if rec then
    local state, p, cust = string.match(rec, '^(%a)|(%d)|([^|]*)')
    if state == 'S' then
      jobs[#jobs + 1] = {ids[k], p, cust, due[2 * k]}
    end
  end
end
queue_jobs(base, KEYS[1], jobs)
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {#jobs, nxt[2] or false}
