--[[
  jobretry-operator: one page of a selector run. Scans the state's sorted set from the run's
  keyset cursor (score = finishedOn, then id compared byte-wise), keeps the jobs that match the
  filters, retries them exactly as BullMQ's Job.retry() of one release would (core.lua,
  prepended when the script is built), and advances the cursor, all in one atomic call: a
  crash can neither skip nor repeat a job. Work per call is bounded by the budget.

  KEYS 1-11: the queue's keys (core.lua); 12 the run record (hash), 13 the queue-and-state
  lock (string).
  ARGV:
    1  state              "failed" | "completed"
    2  flags              release flags (core.lua)
    3  resetAttemptsMade  "1" | "0"
    4  resetAttemptsStarted "1" | "0"
    5  dryRun             "1" | "0": nothing at all is written (no record, ledger or lock)
    6  owner              ledger owner tag
    7  TTL in ms of the ledger, the record and (refreshed each call) the lock
    8  lock holder        the run key; "" = take no lock (dry runs)
    9  lock TTL in ms
    10 lower bound        finishedOn, inclusive ("-inf": none)
    11 upper bound        finishedOn, exclusive: the snapshot, frozen at the run's start
    12 maxJobs            stop after this many matches
    13 budget             at most this many jobs examined in this call
    14 cursor score       dry runs only (real runs keep it in the record); "" = start
    15 cursor id          dry runs only
    16 matched so far     dry runs only
    17 failedReason must contain this ("" = any)
    18… name patterns     Lua patterns, anchored (a job matches if any does; none = any name)

  The record (real runs): cs, cid (cursor), scanned, matched, upper (frozen at the first call,
  wins over ARGV 11), done, and n:<code> (results by code: "1", "-1", "-3", "E"). Its
  presence makes a re-created object with the same run key go on where the run stopped.

  Reply: { status ("more" | "done" | "busy"), cursor score, cursor id, scanned (total),
           matched (total), remaining (estimate: jobs left in the window after the cursor),
           { id, result, id, result, ... } for this call's matches,
           { name, count, ... }, { reason, count, ... } of this call's matches (dry runs
             only, for the preview; empty for real runs, which would pay for them per job),
           oldest and newest finishedOn of this call's matches ("" if none),
           { code, count, ... } of the whole run (real runs; empty for dry runs) }
  "busy": another run holds the lock; element 2 names it; nothing was written.
]]
local R = newRun(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
local recordKey, lockKey = KEYS[12], KEYS[13]
local holder, lockTtl = ARGV[8], ARGV[9]
local maxJobs, budget = tonumber(ARGV[12]), tonumber(ARGV[13])
local reasonNeedle = ARGV[17]
local patterns = {}
for i = 18, #ARGV do patterns[#patterns + 1] = ARGV[i] end

local refused = checkKeyTypes({ {recordKey, "hash"}, {lockKey, "string"} })
if refused then return refused end

-- The lock: one active selector run per queue and state; it expires if its holder stops.
if holder ~= "" then
  local current = rcall("GET", lockKey)
  if current and current ~= holder then return { "busy", current } end
end

-- The run's results so far by code, from the record: exact whatever status writes a crash lost.
local function totals()
  local out = {}
  local all = rcall("HGETALL", recordKey)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == "n:" then
      out[#out + 1] = string.sub(all[i], 3)
      out[#out + 1] = all[i + 1]
    end
  end
  return out
end

-- Where the run stands.
local cs, cid, scanned, matched, upper = ARGV[14], ARGV[15], 0, tonumber(ARGV[16]) or 0, ARGV[11]
if not R.dryRun then
  local rec = rcall("HMGET", recordKey, "cs", "cid", "scanned", "matched", "upper", "done")
  if rec[5] then
    cs, cid, scanned, matched, upper = rec[1] or "", rec[2] or "", tonumber(rec[3]), tonumber(rec[4]), rec[5]
  else
    cs, cid = "", ""
  end
  if rec[6] == "1" then
    return { "done", cs, cid, scanned, matched, 0, {}, {}, {}, "", "", totals() }
  end
end
local stateKey = R.stateKey

-- memcmp order, as Redis orders members of equal score (Lua's < follows the locale).
local function after(a, b)
  if a == b then return false end
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end

-- The rank of the first job after the cursor (ranks are read fresh: retries remove jobs).
local start
if cs == "" then
  start = ARGV[10] == "-inf" and 0 or rcall("ZCOUNT", stateKey, "-inf", "(" .. ARGV[10])
else
  local lo = rcall("ZCOUNT", stateKey, "-inf", "(" .. cs)
  local hi = lo + rcall("ZCOUNT", stateKey, cs, cs)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if after(rcall("ZRANGE", stateKey, mid, mid)[1], cid) then hi = mid else lo = mid + 1 end
  end
  start = lo
end

local function matches(name, reason)
  if reasonNeedle ~= "" and not (reason and string.find(reason, reasonNeedle, 1, true)) then return false end
  if #patterns == 0 then return true end
  if not name then return false end
  for _, p in ipairs(patterns) do
    if string.find(name, p) then return true end
  end
  return false
end

local page = rcall("ZRANGE", stateKey, start, start + budget - 1, "WITHSCORES")
local upperN = tonumber(upper)
local results, moves, names, reasons = {}, {}, {}, {}
local oldest, newest = "", ""
local done = #page < 2 * budget
local fields = { "name", "failedReason", unpack(JOB_FIELDS) }
-- The ledger entries of the whole page in one read (a job this run key retried before is
-- skipped: it failed again, behind the cursor, stamped by a worker whose clock runs behind).
local seenBefore = {}
if R.owner ~= "" and #page > 0 then
  local pageIds = {}
  for i = 1, #page, 2 do pageIds[#pageIds + 1] = page[i] end
  seenBefore = chunked("HMGET", R.ledger, pageIds)
end
for i = 1, #page, 2 do
  local id, score = page[i], page[i + 1]
  if tonumber(score) >= upperN then done = true break end
  scanned = scanned + 1
  cs, cid = score, id
  local ok, f = pcall(rcall, "HMGET", R.base .. id, unpack(fields))
  local take
  if not ok then
    take = reasonNeedle == "" and #patterns == 0
    f = {}
  else
    take = matches(f[1], f[2])
  end
  if take and not seenBefore[(i + 1) / 2] then
    matched = matched + 1
    local r, move
    if not ok then
      r = "E" .. "job key " .. R.base .. id .. " is not a hash"
    else
      r, move = planMove(R, id, { f[3], f[4], f[5] })
    end
    results[#results + 1] = id
    results[#results + 1] = r
    if move then moves[#moves + 1] = move end
    if R.dryRun then
      local name, reason = f[1] or "", string.sub(f[2] or "", 1, 200)
      names[name] = (names[name] or 0) + 1
      reasons[reason] = (reasons[reason] or 0) + 1
    end
    if oldest == "" then oldest = score end
    newest = score
    if matched >= maxJobs then done = true break end
  end
end

local q, dataError = nil, nil
if #moves > 0 then
  q, dataError = readQueueValues(R, moves)
  if not q then return dataError end
end
if not R.dryRun then
  if q then applyMoves(R, moves, q) end
  -- Results by code: one HINCRBY per code (in the order codes first occur), not per job.
  local codes, counts = {}, {}
  for i = 2, #results, 2 do
    local r = results[i]
    local code = string.sub(r, 1, 1) == "E" and "E" or r
    if not counts[code] then codes[#codes + 1] = code; counts[code] = 0 end
    counts[code] = counts[code] + 1
  end
  for _, code in ipairs(codes) do rcall("HINCRBY", recordKey, "n:" .. code, counts[code]) end
  rcall("HSET", recordKey, "cs", cs, "cid", cid, "scanned", scanned, "matched", matched,
    "upper", upper, "done", done and "1" or "0")
  rcall("PEXPIRE", recordKey, R.ttl)
  if holder ~= "" then
    if done then rcall("DEL", lockKey) else rcall("SET", lockKey, holder, "PX", lockTtl) end
  end
end

local function flat(counts)
  local out = {}
  for k, v in pairs(counts) do out[#out + 1] = k; out[#out + 1] = v end
  return out
end
local remaining = 0
if not done then
  remaining = rcall("ZCOUNT", stateKey, cs == "" and ARGV[10] or "(" .. cs, "(" .. upper)
end
return { done and "done" or "more", cs, cid, scanned, matched, remaining, results,
  flat(names), flat(reasons), oldest, newest, R.dryRun and {} or totals() }
