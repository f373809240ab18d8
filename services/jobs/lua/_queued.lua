-- Given to every script of this folder ahead of its own text (kit.redis.Scripts: files named `_*`).
-- Jobs into their customers' queues and their classes, their records marked queued, with a
-- command per key: `jobs` a list of {id, priority, customer, time}, in arrival order; a customer
-- new to its class's rotation joins it at the tail, in the order of its first job.
local function queue_jobs(base, records_key, jobs)
  local queues, classes, order, ranks, whose, records = {}, {}, {}, {}, {}, {}
  for _, job in ipairs(jobs) do
    local id, p, cust, at = job[1], job[2], job[3], job[4]
    local q = base .. ':q:' .. p .. ':' .. cust
    local members = group(queues, order, q)
    if #members == 0 then whose[q] = {p, cust} end
    members[#members + 1] = at
    members[#members + 1] = id
    local all = group(classes, ranks, p)
    all[#all + 1] = at
    all[#all + 1] = id
    records[#records + 1] = id
    records[#records + 1] = 'Q|' .. p .. '|' .. cust
  end
  for _, q in ipairs(order) do
    local p, cust = whose[q][1], whose[q][2]
    each('ZADD', q, queues[q])
    if redis.call('SADD', base .. ':rrset:' .. p, cust) == 1 then
      redis.call('RPUSH', base .. ':rr:' .. p, cust)
    end
  end
  for _, p in ipairs(ranks) do
    each('ZADD', base .. ':all:' .. p, classes[p])
  end
  each('HSET', records_key, records)
end
