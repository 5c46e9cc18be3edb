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

  The ledger is the product's for BullMQ's integer ids (src/bullmq/core.lua, "Ledger
  buckets"): field n % 128 of the bucket hash <ledger>:b:<floor(n / 128)>.

  KEYS: 1 failed (zset), 2 wait, 3 meta, 4 marker, 5 events, 6 ledger, 7 record, 8 active
  ARGV: 1 job key base (P:Q:), 2 page size, 3 upper bound of finishedOn (exclusive),
        4 the ledger hash's entry (unused: integer ids go to buckets), 5 TTL in ms of the
        ledger and the record
  Reply: { jobs retried by this call, "more" | "done" }
]]
local rcall = redis.call
local base, size = ARGV[1], tonumber(ARGV[2])
-- Bucket field names "0" to "127", as the product writes them.
local FIELDS = { [0] = "0",
  "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
  "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32",
  "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46", "47", "48",
  "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60", "61", "62", "63", "64",
  "65", "66", "67", "68", "69", "70", "71", "72", "73", "74", "75", "76", "77", "78", "79", "80",
  "81", "82", "83", "84", "85", "86", "87", "88", "89", "90", "91", "92", "93", "94", "95", "96",
  "97", "98", "99", "100", "101", "102", "103", "104", "105", "106", "107", "108", "109", "110", "111", "112",
  "113", "114", "115", "116", "117", "118", "119", "120", "121", "122", "123", "124", "125", "126", "127" }

local cs = rcall("HGET", KEYS[7], "cs")
local start = cs and rcall("ZCOUNT", KEYS[1], "-inf", "(" .. cs) or 0
-- The window ends at the first job at or after `upper` (as src/bullmq/select.lua cuts it).
local windowEnd = rcall("ZCOUNT", KEYS[1], "-inf", "(" .. ARGV[3])
local stop = math.min(start + size, windowEnd) - 1
if stop < start then return { 0, "done" } end
local page = rcall("ZRANGE", KEYS[1], start, stop, "WITHSCORES")
local ids, last = {}, nil
for i = 1, #page, 2 do
  ids[#ids + 1] = page[i]
  last = page[i + 1]
end

-- Reads: the ledger of the page (one HMGET per bucket), then per job what the retry needs.
local seen, groups, order = {}, {}, {}
for k, id in ipairs(ids) do
  if not string.find(id, "^[1-9]%d*$") or #id > 15 then
    return redis.error_reply("minimal.lua serves integer job ids only; " .. id .. " is not one")
  end
  local n = tonumber(id)
  local b = math.floor(n / 128)
  local g = groups[b]
  if not g then g = { idx = {}, fields = {} }; groups[b] = g; order[#order + 1] = b end
  g.idx[#g.idx + 1] = k
  g.fields[#g.fields + 1] = FIELDS[n % 128]
end
for _, b in ipairs(order) do
  local g = groups[b]
  local v = rcall("HMGET", KEYS[6] .. ":b:" .. b, unpack(g.fields))
  for j, x in ipairs(v) do if x then seen[g.idx[j]] = x end end
end
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
  local wg, worder = {}, {}
  for _, id in ipairs(moved) do
    local n = tonumber(id)
    local b = math.floor(n / 128)
    local a = wg[b]
    if not a then a = {}; wg[b] = a; worder[#worder + 1] = b end
    a[#a + 1] = FIELDS[n % 128]
    a[#a + 1] = "1"
  end
  for _, b in ipairs(worder) do
    local key = KEYS[6] .. ":b:" .. b
    rcall("HSET", key, unpack(wg[b]))
    rcall("PEXPIRE", key, ARGV[5])
  end
end
rcall("HSET", KEYS[7], "cs", last)
rcall("PEXPIRE", KEYS[7], ARGV[5])
return { #moved, #page < 2 * size and "done" or "more" }
