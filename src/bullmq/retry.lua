--[[
  jobretry-operator: retry a batch of finished BullMQ jobs, exactly as BullMQ's Job.retry()
  (the reprocessJob script) of one release would retry each of them, in one atomic call.

  Our own script, written from the behaviour documented in the project's design notes.
  Uses only commands Redis 5.0 has (BullMQ's own minimum).

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
    2  flags              the release's features (src/bullmq/version.rs), letters:
                          m = marker, events MAXLEN and the meta default (>= 5.1.7)
                          c = global concurrency check (>= 5.9.0)
                          p = flow parent update, in its fixed form (>= 5.58.2 / 5.79.2)
                          w = a paused queue's jobs go to wait, not paused (>= 6.0.0)
                          r = priority-aware: priority ~= 0 goes to prioritized (>= 6.3.15)
    3  resetAttemptsMade  "1" | "0"
    4  resetAttemptsStarted "1" | "0"
    5  dryRun             "1" | "0"
    6  owner              ledger owner tag ("" = no ledger)
    7  ledger TTL in ms
    8… job ids

  Returns one string per id, in order:
    "1"   retried              "-1"  job hash missing      "-3"  not in the state set
    "W"   would be retried (dry run)
    "L<v>" already in the ledger with value <v>; nothing done
    "E<msg>" refused for this job (a key of the wrong type, unreadable opts...); nothing done
  Whole-batch error replies, after which nothing was written:
    "JOBRETRY <msg>"       a queue key has the wrong type (or the ledger key holds a job)
    "JOBRETRY_DATA <msg>"  a queue value the retry must parse is invalid (pc, meta.concurrency,
                           meta opts.maxLenEvents); checked only when a job is to be retried,
                           exactly where BullMQ's own script would parse it

  Guarantee: every read, type check and value check happens before the first write, so a
  refused job or batch is never half-retried.
]]
local base, stateKey, metaKey = KEYS[1], KEYS[3], KEYS[6]
local state, flags = ARGV[1], ARGV[2]
local resetAtm, resetAts, dryRun = ARGV[3] == "1", ARGV[4] == "1", ARGV[5] == "1"
local owner, ttl = ARGV[6], tonumber(ARGV[7])
local function has(letter) return string.find(flags, letter, 1, true) ~= nil end
local withMarker, withConcurrency, withParent = has("m"), has("c"), has("p")
local toWaitWhenPaused, priorityAware = has("w"), has("r")
local rcall = redis.call

local function keyType(key)
  return rcall("TYPE", key)["ok"]
end

-- 1. Queue keys must be absent or of BullMQ's type; the ledger must not be a job's hash.
local expected = { {2, "stream"}, {3, "zset"}, {4, "list"}, {5, "list"}, {6, "hash"},
  {7, "list"}, {8, "zset"}, {9, "zset"}, {10, "string"}, {11, "hash"} }
for _, e in ipairs(expected) do
  local t = keyType(KEYS[e[1]])
  if t ~= "none" and t ~= e[2] then
    return redis.error_reply("JOBRETRY key " .. KEYS[e[1]] .. " is a " .. t .. ", expected a " .. e[2])
  end
end
if owner ~= "" then
  local opts = rcall("HGET", KEYS[11], "opts")
  if opts and string.sub(opts, 1, 2) ~= "1@" then
    return redis.error_reply("JOBRETRY the ledger key " .. KEYS[11] .. " holds a BullMQ job, not a ledger")
  end
end

local ids = {}
for i = 8, #ARGV do ids[#ids + 1] = ARGV[i] end
local n = #ids
local results = {}
if n == 0 then return results end

-- Runs `cmd key <items>` in chunks that fit Lua's stack; concatenates the replies.
local function chunked(cmd, key, list)
  local out = {}
  for i = 1, #list, 5000 do
    local part = rcall(cmd, key, unpack(list, i, math.min(i + 4999, #list)))
    if type(part) == "table" then
      for _, v in ipairs(part) do out[#out + 1] = v end
    end
  end
  return out
end

local ledger = {}
if owner ~= "" then ledger = chunked("HMGET", KEYS[11], ids) end

-- The job's stored opts, as BullMQ's client parses them before retrying; nil if unreadable.
local function readOpts(raw)
  if not raw then return {} end
  local ok, decoded = pcall(cjson.decode, raw)
  if not ok or type(decoded) ~= "table" then return nil end
  return decoded
end

local function truthy(v)
  return v ~= nil and v ~= false and v ~= 0 and v ~= "" and v ~= cjson.null
end

local parentTypes = { {":unsuccessful", "zset"}, {":failed", "hash"}, {":processed", "hash"},
  {":dependencies", "set"} }

-- Checks a flow parent's records; returns the parent key to update, false, or an error text.
local function checkParent(parentKey)
  local ok, exists = pcall(rcall, "EXISTS", parentKey)
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

-- Plans one job (reads only): its result code and, when it is to be retried, its move.
local seen = {}
local function planJob(i, id)
  if ledger[i] then return "L" .. ledger[i] end
  if seen[id] then return "-3" end
  seen[id] = true
  local jobKey = base .. id
  local ok, f = pcall(rcall, "HMGET", jobKey, "priority", "parentKey", "opts")
  if not ok then return "E" .. "job key " .. jobKey .. " is not a hash" end
  if not (f[1] or f[2] or f[3]) and rcall("EXISTS", jobKey) == 0 then return "-1" end
  if not rcall("ZSCORE", stateKey, id) then return "-3" end
  local opts = readOpts(f[3])
  if not opts then return "E" .. "the job's opts field is not valid JSON; BullMQ cannot load the job" end
  local move = { id = id, key = jobKey, lifo = truthy(opts["lifo"]) }
  if priorityAware then
    local prio = tonumber(f[1]) or 0
    if prio ~= prio then return "E" .. "the job's priority field " .. tostring(f[1]) .. " is not a number" end
    if prio ~= 0 then move.prio = prio end
  end
  if withParent and f[2] then
    local parent, perr = checkParent(f[2])
    if perr then return "E" .. perr end
    move.parent = parent
  end
  return dryRun and "W" or "1", move
end

-- 2. Plan every job; nothing is written yet.
local moves, nPrio = {}, 0
for i = 1, n do
  local r, move = planJob(i, ids[i])
  results[i] = r
  if move then
    moves[#moves + 1] = move
    if move.prio then nPrio = nPrio + 1 end
  end
end
if #moves == 0 then return results end

-- 3. Queue-wide values, read and checked where BullMQ's script would parse them.
local function dataError(msg) return redis.error_reply("JOBRETRY_DATA " .. msg) end
-- A Redis integer as string2ll reads it (no sign '+', no leading zeros, no spaces).
local function isRedisInteger(s, allowNegative)
  if s == "0" then return true end
  local pattern = allowNegative and "^%-?[1-9]%d*$" or "^[1-9]%d*$"
  return string.find(s, pattern) ~= nil and #s <= 18
end
local meta = rcall("HMGET", metaKey, "paused", "concurrency", "opts.maxLenEvents")
local paused = meta[1] ~= false
local pausedOrMaxed = paused
if not paused and withConcurrency and meta[2] then
  local limit = tonumber(meta[2])
  if not limit then
    return dataError(metaKey .. " field concurrency is " .. meta[2] .. ", not a number; fix or delete it (Queue.setGlobalConcurrency)")
  end
  pausedOrMaxed = rcall("LLEN", KEYS[7]) >= limit
end
local maxLen = meta[3]
if withMarker and maxLen and not isRedisInteger(maxLen, false) then
  return dataError(metaKey .. " field opts.maxLenEvents is " .. maxLen .. ", not a non-negative integer; fix it (the queue's streams.events.maxLen)")
end
if nPrio > 0 then
  local pc = rcall("GET", KEYS[10])
  if pc and not isRedisInteger(pc, true) then
    return dataError("priority counter " .. KEYS[10] .. " is " .. pc .. ", not an integer; fix it before retrying prioritized jobs")
  end
end
if dryRun then return results end

-- 4. Writes, in an order whose end state equals one reprocessJob call per job.
local resetFields = { "finishedOn", "processedOn", state == "failed" and "failedReason" or "returnvalue" }
if resetAtm then resetFields[#resetFields + 1] = "atm" end
if resetAts then resetFields[#resetFields + 1] = "ats" end
local nf = #resetFields
local moved, fifo, lifo, prioritized = {}, {}, {}, {}
for k, m in ipairs(moves) do
  moved[k] = m.id
  rcall("HDEL", m.key, unpack(resetFields, 1, nf))
  if m.prio then
    prioritized[#prioritized + 1] = m
  elseif m.lifo then
    lifo[#lifo + 1] = m.id
  else
    fifo[#fifo + 1] = m.id
  end
end
chunked("ZREM", stateKey, moved)

local target = KEYS[4]
if paused and not toWaitWhenPaused then target = KEYS[5] end
if #fifo > 0 then chunked("LPUSH", target, fifo) end
if #lifo > 0 then chunked("RPUSH", target, lifo) end
if #prioritized > 0 then
  local last = rcall("INCRBY", KEYS[10], #prioritized)
  local first = last - #prioritized + 1
  for k, m in ipairs(prioritized) do
    rcall("ZADD", KEYS[9], m.prio * 0x100000000 + (first + k - 1) % 0x100000000, m.id)
  end
end
if withMarker and not pausedOrMaxed then rcall("ZADD", KEYS[8], 0, "0") end

for _, m in ipairs(moves) do
  if m.parent then
    local deps = m.parent .. ":dependencies"
    if state == "failed" then
      if rcall("ZREM", m.parent .. ":unsuccessful", m.key) == 1 or
         rcall("HDEL", m.parent .. ":failed", m.key) == 1 then
        rcall("SADD", deps, m.key)
      end
    elseif rcall("HDEL", m.parent .. ":processed", m.key) == 1 then
      rcall("SADD", deps, m.key)
    end
  end
end

local events = KEYS[2]
if withMarker then
  if not maxLen then
    maxLen = 10000
    rcall("HSET", metaKey, "opts.maxLenEvents", maxLen)
  end
  for _, id in ipairs(moved) do
    rcall("XADD", events, "MAXLEN", "~", maxLen, "*", "event", "waiting", "jobId", id, "prev", state)
  end
else
  for _, id in ipairs(moved) do
    rcall("XADD", events, "*", "event", "waiting", "jobId", id, "prev", state)
  end
end

if owner ~= "" then
  local entry = "1@" .. owner
  local fields, nfld = {}, 0
  for _, id in ipairs(moved) do
    fields[nfld + 1] = id
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
