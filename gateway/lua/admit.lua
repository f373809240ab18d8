-- GCRA (generic cell rate algorithm): one key per bucket holds its theoretical arrival time
-- (TAT, µs, on Redis's clock, so every gateway replica shares one bucket without clock skew).
-- KEYS[1] the bucket; ARGV[1] µs between requests at the sustained rate; ARGV[2] burst;
-- ARGV[3] cost, 1 unless given: 0 asks whether a request would be admitted without spending it;
-- ARGV[4] '1' makes the cost a most: as many requests as the bucket admits now, up to it, are taken.
-- Returns {taken (1 unless ARGV[4]), 0, remaining} when admitted, {0, retry_after_us, 0} when not.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local cost = tonumber(ARGV[3] or '1')
local up_to = ARGV[4] == '1'
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
if tat - tolerance > now then
  return {0, tat - tolerance - now, 0}
end
if up_to then
  cost = math.min(cost, math.floor((now + tolerance - tat) / interval) + 1)
end
local next_tat = tat + interval * cost
if cost > 0 then
  redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil((next_tat - now) / 1000) + 1)
end
return {up_to and cost or 1, 0, math.floor((now + tolerance - next_tat) / interval) + 1}
