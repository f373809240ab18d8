-- Enqueue many jobs of one job type. KEYS[1] job records hash, KEYS[2] scheduled zset (both {jt:<type>}).
-- ARGV[1] key base "<prefix>{jt:<type>}", then per job 4 values: id, priority 1..4, customer, enqueued_at.
-- Idempotent per job id: a job already known (queued, scheduled or leased) is left alone.
-- Returns the number of jobs queued now.
-- The writes go as one command per key (`queue_jobs`, in _queued.lua), not one per job: a
-- script's cost is mostly its redis.call()s, and a batch of 1,000 made 5,000 of them.
local base = ARGV[1]
local ids = {}
for i = 2, #ARGV, 4 do
  local p = tonumber(ARGV[i + 1])
  if p == nil or p < 1 or p > 4 or p % 1 ~= 0 or tonumber(ARGV[i + 3]) == nil then
    return redis.error_reply('INVALID_ARGUMENT bad priority or time for job ' .. ARGV[i])
  end
  ids[#ids + 1] = ARGV[i]
end
local known = hmget(KEYS[1], ids)
local seen, jobs = {}, {}
for k = 1, #ids do
  local i = 2 + (k - 1) * 4
  local id = ARGV[i]
  if not known[k] and not seen[id] then
    seen[id] = true
    jobs[#jobs + 1] = {id, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]}
  end
end
queue_jobs(base, KEYS[1], jobs)
return #jobs
