--[[
  jobretry-operator: retry a batch of finished BullMQ jobs, exactly as BullMQ's Job.retry()
  (the reprocessJob script) would retry each of them, in one atomic call.

  Our own script, written from the behaviour documented in the project's design notes.

  KEYS (all in the queue's hash slot):
    1  P:Q:              job key base (job keys are P:Q:<id>)
    2  P:Q:events        stream
    3  P:Q:<state>       zset, "failed" or "completed"
    4  P:Q:wait          list
    5  P:Q:paused        list (BullMQ 5 puts retried jobs of a paused queue here)
    6  P:Q:meta          hash
    7  P:Q:active        list
    8  P:Q:marker        zset
    9  P:Q:prioritized   zset
    10 P:Q:pc            string (priority counter)
    11 ledger            hash: job id -> "1@<owner>" for every job this run key retried

  ARGV:
    1  state              "failed" | "completed"
    2  family             "5" | "6" | "6p" (priority-aware, BullMQ >= 6.3.16) | "agree"
                          ("agree": version unknown; retry only jobs that every family
                          treats the same, skip the others)
    3  features           letters: m = add marker, x = MAXLEN events + meta default,
                          c = global concurrency check, p = update flow parent
    4  resetAttemptsMade  "1" | "0"
    5  resetAttemptsStarted "1" | "0"
    6  dryRun             "1" | "0"
    7  owner              ledger owner tag ("" = no ledger)
    8  ledger TTL in ms
    9… job ids

  Returns one string per id, in order:
    "1"   retried              "-1"  job hash missing      "-3"  not in the state set
    "W"   would be retried (dry run)
    "L<v>" already in the ledger with value <v>; nothing done
    "S<msg>" skipped: the families disagree and the version is unknown; nothing done
    "E<msg>" refused for this job (a key of the wrong type...); nothing done
  A whole-batch error reply "JOBRETRY <msg>" means a queue key has the wrong type; nothing
  was written.

  Guarantee: every read and type check happens before the first write, so a refused job
  or batch is never half-retried.
]]
local base, stateKey = KEYS[1], KEYS[3]
local state, family, features = ARGV[1], ARGV[2], ARGV[3]
local resetAtm, resetAts, dryRun = ARGV[4] == "1", ARGV[5] == "1", ARGV[6] == "1"
local owner, ttl = ARGV[7], tonumber(ARGV[8])
local hasMarker = string.find(features, "m", 1, true) ~= nil
local hasMaxLen = string.find(features, "x", 1, true) ~= nil
local hasConcurrency = string.find(features, "c", 1, true) ~= nil
local hasParent = string.find(features, "p", 1, true) ~= nil

local function keyType(key)
  return redis.call("TYPE", key)["ok"]
end

-- 1. Queue keys must be absent or of BullMQ's type.
local expected = { {2, "stream"}, {3, "zset"}, {4, "list"}, {5, "list"}, {6, "hash"},
  {7, "list"}, {8, "zset"}, {9, "zset"}, {10, "string"}, {11, "hash"} }
for _, e in ipairs(expected) do
  local t = keyType(KEYS[e[1]])
  if t ~= "none" and t ~= e[2] then
    return redis.error_reply("JOBRETRY key " .. KEYS[e[1]] .. " is a " .. t .. ", expected a " .. e[2])
  end
end

-- 2. Queue-wide facts, read once: paused / maxed, max events length.
local meta = redis.call("HMGET", KEYS[6], "paused", "concurrency", "opts.maxLenEvents")
local paused = meta[1] ~= false
local pausedOrMaxed = paused
if not pausedOrMaxed and hasConcurrency and meta[2] then
  pausedOrMaxed = redis.call("LLEN", KEYS[7]) >= tonumber(meta[2])
end

local ids = {}
for i = 9, #ARGV do ids[#ids + 1] = ARGV[i] end
local n = #ids
local results = {}
if n == 0 then return results end

-- Runs `cmd key <items>` in chunks that fit Lua's stack; concatenates the replies.
local function chunked(cmd, key, list)
  local out = {}
  for i = 1, #list, 5000 do
    local part = redis.call(cmd, key, unpack(list, i, math.min(i + 4999, #list)))
    if type(part) == "table" then
      for _, v in ipairs(part) do out[#out + 1] = v end
    end
  end
  return out
end

local ledger = {}
if owner ~= "" then ledger = chunked("HMGET", KEYS[11], ids) end
local scores = chunked("ZMSCORE", stateKey, ids)

local function isLifo(opts)
  if not opts or not string.find(opts, '"lifo"', 1, true) then return false end
  local ok, decoded = pcall(cjson.decode, opts)
  if not ok or type(decoded) ~= "table" then return false end
  local v = decoded["lifo"]
  return v ~= nil and v ~= false and v ~= 0 and v ~= "" and v ~= cjson.null
end

local parentTypes = { {":unsuccessful", "zset"}, {":failed", "hash"}, {":processed", "hash"},
  {":dependencies", "set"} }

-- Checks a flow parent's records; returns the parent key to update, false, or an error text.
local function checkParent(parentKey)
  if not parentKey or not hasParent then return false end
  local ok, exists = pcall(redis.call, "EXISTS", parentKey)
  if not ok then
    return nil, "parent " .. parentKey .. " cannot be reached from the queue's hash slot: " ..
      tostring(exists and exists.err or exists)
  end
  if exists == 0 then return false end
  for _, p in ipairs(parentTypes) do
    local t = keyType(parentKey .. p[1])
    if t ~= "none" and t ~= p[2] then
      return nil, "parent key " .. parentKey .. p[1] .. " is a " .. t .. ", expected a " .. p[2]
    end
  end
  return parentKey
end

-- 3. Plan every job; nothing is written yet.
local rcall = redis.call
local seen = {}
local planIds, planKeys, fifo, lifo, prioritized, prioOf, parents = {}, {}, {}, {}, {}, {}, {}
local np = 0
local agree = family == "agree"
local sixP = family == "6p"
for i = 1, n do
  local id = ids[i]
  local r
  local l = ledger[i]
  if l then
    r = "L" .. l
  elseif seen[id] then
    r = "-3"
  else
    seen[id] = true
    local jobKey = base .. id
    local ok, f = pcall(rcall, "HMGET", jobKey, "priority", "parentKey", "opts")
    if not ok then
      r = "E" .. "job key " .. jobKey .. " is not a hash"
    elseif not (f[1] or f[2] or f[3]) and rcall("EXISTS", jobKey) == 0 then
      r = "-1"
    elseif not scores[i] then
      r = "-3"
    else
      local prio = tonumber(f[1]) or 0
      local parent, perr = false, nil
      if f[2] then parent, perr = checkParent(f[2]) end
      if perr then
        r = "E" .. perr
      elseif agree and paused then
        r = "S" .. "the queue is paused and its BullMQ version is unknown: BullMQ 5 and 6 put retried jobs of a paused queue on different lists; set spec.queue.bullmqVersion"
      elseif agree and prio > 0 then
        r = "S" .. "the job has a priority and the queue's BullMQ version is unknown: BullMQ >= 6.3.16 retries it to prioritized, older versions to wait; set spec.queue.bullmqVersion"
      elseif dryRun then
        r = "W"
      else
        r = "1"
        np = np + 1
        planIds[np] = id
        planKeys[np] = jobKey
        if sixP and prio > 0 then
          prioritized[#prioritized + 1] = id
          prioOf[#prioritized] = prio
        elseif isLifo(f[3]) then
          lifo[#lifo + 1] = id
        else
          fifo[#fifo + 1] = id
        end
        if parent then parents[#parents + 1] = { parent, jobKey } end
      end
    end
  end
  results[i] = r
end

if np == 0 then return results end

-- 4. Writes, in an order whose end state equals one reprocessJob call per job.
local resetFields = { "finishedOn", "processedOn", state == "failed" and "failedReason" or "returnvalue" }
if resetAtm then resetFields[#resetFields + 1] = "atm" end
if resetAts then resetFields[#resetFields + 1] = "ats" end
chunked("ZREM", stateKey, planIds)
local nf = #resetFields
for k = 1, np do rcall("HDEL", planKeys[k], unpack(resetFields, 1, nf)) end

local target = KEYS[4]
if family == "5" and paused then target = KEYS[5] end
if #fifo > 0 then chunked("LPUSH", target, fifo) end
if #lifo > 0 then chunked("RPUSH", target, lifo) end
if #prioritized > 0 then
  local last = rcall("INCRBY", KEYS[10], #prioritized)
  local first = last - #prioritized + 1
  for k, id in ipairs(prioritized) do
    rcall("ZADD", KEYS[9], prioOf[k] * 0x100000000 + (first + k - 1) % 0x100000000, id)
  end
end
if hasMarker and not pausedOrMaxed then rcall("ZADD", KEYS[8], 0, "0") end

for _, p in ipairs(parents) do
  local parentKey, jobKey = p[1], p[2]
  local deps = parentKey .. ":dependencies"
  if state == "failed" then
    if rcall("ZREM", parentKey .. ":unsuccessful", jobKey) == 1 or
       rcall("HDEL", parentKey .. ":failed", jobKey) == 1 then
      rcall("SADD", deps, jobKey)
    end
  elseif rcall("HDEL", parentKey .. ":processed", jobKey) == 1 then
    rcall("SADD", deps, jobKey)
  end
end

local maxLen = meta[3]
if hasMaxLen and not maxLen then
  maxLen = 10000
  rcall("HSET", KEYS[6], "opts.maxLenEvents", maxLen)
end
local events = KEYS[2]
if hasMaxLen then
  for k = 1, np do
    rcall("XADD", events, "MAXLEN", "~", maxLen, "*", "event", "waiting", "jobId", planIds[k], "prev", state)
  end
else
  for k = 1, np do
    rcall("XADD", events, "*", "event", "waiting", "jobId", planIds[k], "prev", state)
  end
end

if owner ~= "" then
  local entry = "1@" .. owner
  local fields, nfld = {}, 0
  for k = 1, np do
    fields[nfld + 1] = planIds[k]
    fields[nfld + 2] = entry
    nfld = nfld + 2
    if nfld >= 5000 then
      rcall("HSET", KEYS[11], unpack(fields, 1, nfld))
      nfld = 0
    end
  end
  if nfld > 0 then rcall("HSET", KEYS[11], unpack(fields, 1, nfld)) end
  rcall("PEXPIRE", KEYS[11], ttl)
end
return results
