--[[
  benches/minimal.lua: the floor a selector page is measured against (path `m` of
  benches/retry.rs). One page of an unfiltered run over a queue's failed jobs that does only
  what BullMQ 6.x's Job.retry (its reprocessJob script, with the client's read of the job's
  opts for lifo) reads and writes for each job, plus the exactly-once bookkeeping the product
  promises (the run's cursor in a record, the ledger), and nothing else: no key type checks,
  no filters, no lock, no per-job reply, no shortcut of its own.

  It serves the bench's plain jobs only (no priority, no flow parent, no lifo, queue not
  paused): it stops with an error on any other job, so it can never be unfaithful silently.
  In an unfiltered run every scanned job leaves the failed set, so the page starts at the
  first job not before the cursor's score.

  KEYS: 1 failed (zset), 2 wait, 3 meta, 4 marker, 5 events, 6 ledger, 7 record, 8 active
  ARGV: 1 job key base (P:Q:), 2 page size, 3 upper bound of finishedOn (exclusive),
        4 the ledger entry, 5 TTL in ms of the ledger and the record
  Reply: { jobs retried by this call, "more" | "done" }
]]
local rcall = redis.call
local base, size, upper = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local cs = rcall("HGET", KEYS[7], "cs")
local start = cs and rcall("ZCOUNT", KEYS[1], "-inf", "(" .. cs) or 0
local page = rcall("ZRANGE", KEYS[1], start, start + size - 1, "WITHSCORES")
local ids, last = {}, nil
for i = 1, #page, 2 do
  if tonumber(page[i + 1]) >= upper then break end
  ids[#ids + 1] = page[i]
  last = page[i + 1]
end
if #ids == 0 then return { 0, "done" } end

-- Reads: the ledger of the page, then per job what the retry needs.
local seen = rcall("HMGET", KEYS[6], unpack(ids))
local moved = {}
for k, id in ipairs(ids) do
  if not seen[k] then
    local f = rcall("HMGET", base .. id, "priority", "parentKey", "opts")
    local opts = f[3] and cjson.decode(f[3]) or {}
    if (tonumber(f[1]) or 0) ~= 0 or f[2] or (opts["lifo"] and opts["lifo"] ~= cjson.null) then
      return redis.error_reply("minimal.lua serves plain jobs only; job " .. id .. " is not one")
    end
    moved[#moved + 1] = id
  end
end

if #moved > 0 then
  local meta = rcall("HMGET", KEYS[3], "paused", "concurrency", "opts.maxLenEvents")
  if meta[1] then return redis.error_reply("minimal.lua serves a queue that is not paused") end
  local maxed = meta[2] and rcall("LLEN", KEYS[8]) >= tonumber(meta[2])
  for _, id in ipairs(moved) do
    rcall("HDEL", base .. id, "finishedOn", "processedOn", "failedReason")
  end
  rcall("ZREM", KEYS[1], unpack(moved))
  rcall("LPUSH", KEYS[2], unpack(moved))
  if not maxed then rcall("ZADD", KEYS[4], 0, "0") end
  local maxLen = meta[3]
  if not maxLen then
    maxLen = 10000
    rcall("HSET", KEYS[3], "opts.maxLenEvents", maxLen)
  end
  for _, id in ipairs(moved) do
    rcall("XADD", KEYS[5], "MAXLEN", "~", maxLen, "*", "event", "waiting", "jobId", id, "prev", "failed")
  end
  local fields = {}
  for _, id in ipairs(moved) do
    fields[#fields + 1] = id
    fields[#fields + 1] = ARGV[4]
  end
  rcall("HSET", KEYS[6], unpack(fields))
  rcall("PEXPIRE", KEYS[6], ARGV[5])
end
rcall("HSET", KEYS[7], "cs", last)
rcall("PEXPIRE", KEYS[7], ARGV[5])
return { #moved, #page < 2 * size and "done" or "more" }
