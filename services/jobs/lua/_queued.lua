-- Given to every script of this folder ahead of its own text (kit.redis.Scripts: files named `_*`).
-- Jobs into their customers' queues and their classes, their records marked queued, with a
-- command per key: `jobs` a list of {id, priority, customer, time}, in arrival order; a customer
-- new to its class's rotation joins it at the tail, in the order of its first job.
local function queue_jobs(base, records_key, jobs)
  local queues, classes, order, ranks, records = {}, {}, {}, {}, {}
  for _, job in ipairs(jobs) do
    local id, p, cust, at = job[1], job[2], job[3], job[4]
    local q = base .. ':q:' .. p .. ':' .. cust
    if not queues[q] then
      queues[q] = {}
      order[#order + 1] = {q, p, cust}
    end
    local members = queues[q]
    members[#members + 1] = at
    members[#members + 1] = id
    if not classes[p] then
      classes[p] = {}
      ranks[#ranks + 1] = p
    end
    local all = classes[p]
    all[#all + 1] = at
    all[#all + 1] = id
    records[#records + 1] = id
    records[#records + 1] = 'Q|' .. p .. '|' .. cust
  end
  for _, entry in ipairs(order) do
    local q, p, cust = entry[1], entry[2], entry[3]
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
