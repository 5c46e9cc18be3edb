--[[
  jobretry-operator: one page of a selector run. Scans the state's sorted set from the run's
  keyset cursor (score = finishedOn, then id compared byte-wise), keeps the jobs that match the
  filters, retries them exactly as BullMQ's Job.retry() of one release would (core.lua,
  prepended when the script is built), and advances the cursor, all in one atomic call: a
  crash can neither skip nor repeat a job.

  Bounded work, whatever the input: at most `budget` jobs are examined; name globs are matched
  by a greedy matcher with one backtrack point (at most #name * #glob steps, no Lua pattern is
  ever built from user input); the lengths of name and failedReason are read first (HSTRLEN,
  O(1)) so that no more than `bytes budget` bytes of them are copied per call; matching costs
  one work unit per matcher step and one per 16 bytes of failedReason searched, at most `work
  budget` per call. A job that does not fit in what is left of a call ends the page before it
  (the next call starts with it); a job that would not fit in a whole call, or whose key is
  not a hash, is "unexamined": counted, skipped, never retried.

  A dry run (core's dryRun) writes nothing at all: no record, ledger or lock. Core's ttl is
  also that of the record and (refreshed each call) of the lock.

  KEYS (after core.lua's 1-11):
    12 record        hash: the run record
    13 lock          string: the queue-and-state lock
    14 retriesNow    hash: a policy's per-job retry counts, this period (job id -> count)
    15 retriesBefore hash: the same, the period before (read, never written)
  ARGV (after core.lua's 1-8):
    9  holder        the lock holder: the run key; "" = take no lock (dry runs)
    10 lockTtl       lock TTL in ms
    11 lower         finishedOn lower bound, inclusive ("-inf": none)
    12 upper         finishedOn upper bound, exclusive: the snapshot, frozen at the run's start
    13 maxJobs       stop after this many matches
    14 budget        at most this many jobs examined in this call
    15 cursorScore   dry runs only (real runs keep it in the record); "" = start
    16 cursorId      dry runs only
    17 matched       matches so far; dry runs only
    18 reason        failedReason must contain this ("" = any)
    19 scanned       real runs: what the run's status says its record had scanned; a
                     record that is missing or behind it means the run's state in Redis
                     is lost (another server, or lost writes): reply "lost"
    20 workBudget    matching work units per call
    21 bytesBudget   bytes of names and reasons copied per call
    22 guardMax      a policy run's per-job cap: a matched job its policy's runs retried this
                     many times (the two periods' counts together) is Parked, not retried, and
                     counts neither toward maxJobs nor as refailed; "0" = counted, no cap;
                     "" = not a policy run: KEYS 14-15 are never touched
    23 guardTtl      TTL in ms of retriesNow, set with each increment
    24 retryBudget   at most this many matches in this call (the page ends before the next
                     job once it is reached): `budget` bounds the jobs a call examines, this
                     bounds the ones it retries, which cost more
    25 rowsLeft      success rows ("1", "W") to reply with: a status keeps them only while
                     its run is within its row limit; "-1" = every row; other rows always
    26 wantTotals    "1": reply with the run's results by code from the record (real runs);
                     else that element is empty (the caller adds the calls' counts)
    27… names        name globs: `*` any run of characters, `?` one character (a byte and
                     the continuation bytes 0x80-0xBF after it); a job matches if any glob
                     matches its whole name; none = any name

  The record (real runs): cs, cid (cursor), scanned, matched, unexamined, refailed, upper
  (frozen at the first call, wins over ARGV 11), done, and n:<code> (results by code: "1",
  "-1", "-3", "E", "P"). A policy run's retried jobs are counted in retriesNow in the same
  call as their retry; a job the run's ledger holds is not matched again, so a re-applied or
  restarted run never counts a job twice.
  Its presence makes a re-created object with the same run key go on where the run stopped.

  Reply: { status ("more" | "done" | "busy" | "lost"), cursor score, cursor id, scanned
           (total), matched (total), remaining (estimate: jobs left in the window after the
           cursor), { id, result, id, result, ... } for this call's matches (success rows
           only within rowsLeft),
           { name, count, ... }, { reason, count, ... } of this call's matches (dry runs
             only, for the preview, each cut to 200 bytes at a character boundary; empty for
             real runs, which would pay for them per job),
           oldest and newest finishedOn of this call's matches ("" if none),
           { code, count, ... } of the whole run (real runs; empty for dry runs),
           the upper bound the run uses (the record's), unexamined (real runs: total; dry
           runs: this call's), refailed (matched jobs its policy's runs had retried before;
           real runs: total; dry runs: this call's), this call's scanned, this call's
           matched, { code, count, ... } of this call's matches (codes as in the record) }
  Per-job result "P": Parked (guardMax reached); nothing was written for the job.
  "busy": another run holds the lock; element 2 names it; nothing was written.
  "lost": { "lost", scanned in the record ("" if there is none), matched in the record };
          nothing was written.
]]
local R = newRun(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
R.ledgerBuckets = true
local recordKey, lockKey = KEYS[12], KEYS[13]
local holder, lockTtl = ARGV[9], ARGV[10]
local maxJobs, budget = tonumber(ARGV[13]), tonumber(ARGV[14])
local reasonNeedle = ARGV[18]
local expectedScanned = tonumber(ARGV[19]) or 0
local workBudget, bytesBudget = tonumber(ARGV[20]), tonumber(ARGV[21])
local guarded = ARGV[22] ~= ""
local guardMax, guardTtl = tonumber(ARGV[22]) or 0, tonumber(ARGV[23])
local retriesNow, retriesBefore = KEYS[14], KEYS[15]
local retryBudget, rowsLeft, wantTotals = tonumber(ARGV[24]), tonumber(ARGV[25]), ARGV[26] == "1"
local byte, sub = string.byte, string.sub
local STAR, ANY = 42, 63

local function isCont(c) return c ~= nil and c >= 0x80 and c <= 0xBF end

-- The byte after a character that starts at byte i of s (n = #s): a character is a byte and
-- the continuation bytes (0x80-0xBF) after it, one UTF-8 character in valid text.
local function nextChar(s, i, n)
  i = i + 1
  while i <= n and isCont(byte(s, i)) do i = i + 1 end
  return i
end

-- A glob, compiled once per call into tokens: STAR, ANY, or a literal character (its first
-- byte in `b`, its bytes in `lit`); and the literal prefix and suffix every match must have
-- (checked first, in C, so that the usual `charge-*` costs one step).
local function compileGlob(g)
  local b, lit, n = {}, {}, #g
  local i = 1
  while i <= n do
    local e = nextChar(g, i, n)
    b[#b + 1] = byte(g, i)
    lit[#b] = sub(g, i, e - 1)
    i = e
  end
  local m = #b
  local first, last = 1, m
  while first <= m and b[first] ~= STAR and b[first] ~= ANY do first = first + 1 end
  while last >= 1 and b[last] ~= STAR and b[last] ~= ANY do last = last - 1 end
  local function join(from, to) return table.concat(lit, "", from, to) end
  return { text = g, b = b, lit = lit, m = m, literal = first > m, prefix = join(1, first - 1),
    suffix = (last >= 1 and b[last] == STAR) and join(last + 1, m) or nil }
end

local globs = {}
for i = 27, #ARGV do globs[#globs + 1] = compileGlob(ARGV[i]) end

-- Whether glob G matches all of s: greedy, with one backtrack point (the last `*`), so at
-- most #s * #G steps. Returns the verdict (nil: `limit` steps did not decide) and the steps.
local function globMatch(s, G, limit)
  if G.literal then return s == G.text, 1 end
  local n = #s
  local np = #G.prefix
  if np > 0 and (sub(s, 1, np) ~= G.prefix or isCont(byte(s, np + 1))) then return false, 1 end
  if G.suffix and (n < #G.prefix + #G.suffix or sub(s, n - #G.suffix + 1) ~= G.suffix) then
    return false, 1
  end
  local gb, gl, m = G.b, G.lit, G.m
  local i, j, star, mark, steps = 1, 1, nil, 1, 1
  while i <= n do
    steps = steps + 1
    if steps > limit then return nil, steps end
    local pj = gb[j]
    local e
    if pj ~= nil and pj ~= STAR and pj ~= ANY and pj == byte(s, i) then
      local w = #gl[j]
      e = i + w
      if (w > 1 and sub(s, i, e - 1) ~= gl[j]) or isCont(byte(s, e)) then e = nil end
    end
    if pj == STAR then
      repeat j = j + 1 until gb[j] ~= STAR
      if j > m then return true, steps end
      star, mark = j, i
    elseif pj == ANY then
      i, j = nextChar(s, i, n), j + 1
    elseif e then
      i, j = e, j + 1
    elseif star then
      mark = nextChar(s, mark, n)
      i, j = mark, star
    else
      return false, steps
    end
  end
  while gb[j] == STAR do j = j + 1 end
  return j > m, steps
end

local extraKeys = { {recordKey, "hash"}, {lockKey, "string"} }
if guarded then
  extraKeys[3] = {retriesNow, "hash"}
  extraKeys[4] = {retriesBefore, "hash"}
end
local refused = checkKeyTypes(extraKeys)
if refused then return refused end

-- The run's results so far by code, from the record: exact whatever status writes a crash lost.
local function totals()
  local out = {}
  local all = rcall("HGETALL", recordKey)
  for i = 1, #all, 2 do
    if sub(all[i], 1, 2) == "n:" then
      out[#out + 1] = sub(all[i], 3)
      out[#out + 1] = all[i + 1]
    end
  end
  return out
end

-- Where the run stands.
local cs, cid, scanned, matched, upper = ARGV[15], ARGV[16], 0, tonumber(ARGV[17]) or 0, ARGV[12]
local unexamined, refailed, parked = 0, 0, 0
if not R.dryRun then
  local rec = rcall("HMGET", recordKey, "cs", "cid", "scanned", "matched", "upper", "done", "unexamined",
    "refailed", "n:P")
  if not rec[5] then
    -- The status says the run had progressed, but its record is not here.
    if expectedScanned > 0 then return { "lost", "", 0 } end
    cs, cid = "", ""
  else
    cs, cid, scanned, matched, upper = rec[1] or "", rec[2] or "", tonumber(rec[3]), tonumber(rec[4]), rec[5]
    unexamined = tonumber(rec[7]) or 0
    refailed, parked = tonumber(rec[8]) or 0, tonumber(rec[9]) or 0
    if scanned < expectedScanned then return { "lost", rec[3], rec[4] } end
  end
  if rec[6] == "1" then
    return { "done", cs, cid, scanned, matched, 0, {}, {}, {}, "", "", totals(), upper, unexamined, refailed,
      0, 0, {} }
  end
end

-- The lock: one active selector run per queue and state; it expires if its holder stops.
if holder ~= "" then
  local current = rcall("GET", lockKey)
  if current and current ~= holder then return { "busy", current } end
end
local stateKey = R.stateKey

-- memcmp order, as Redis orders members of equal score (Lua's < follows the locale).
local function after(a, b)
  if a == b then return false end
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = byte(a, i), byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end

-- The rank of the first job after the cursor (ranks are read fresh: retries remove jobs).
local start
if cs == "" then
  start = ARGV[11] == "-inf" and 0 or rcall("ZCOUNT", stateKey, "-inf", "(" .. ARGV[11])
else
  local lo = rcall("ZCOUNT", stateKey, "-inf", "(" .. cs)
  local hi = lo + rcall("ZCOUNT", stateKey, cs, cs)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if after(rcall("ZRANGE", stateKey, mid, mid)[1], cid) then hi = mid else lo = mid + 1 end
  end
  start = lo
end

-- What this call may still spend on matching.
local workLeft, bytesLeft = workBudget, bytesBudget
local filterName, filterReason = #globs > 0, reasonNeedle ~= ""
-- Preview values of fields no filter reads are fetched only up to this size (256 KiB, about
-- 0.5 ms to copy); a larger one shows as "(a name of N bytes)".
local PREVIEW_FETCH = 262144

-- Examines the job at `key`: true / false (it matches or not, with its name and reason when
-- fetched), "unexamined" (its key is not a hash while a filter must read it, or it would not
-- fit in a whole call), or nil (it does not fit in what is left of this call). `first`: it is
-- the first job this call examines. Spends the work and bytes it used.
local function examine(key, first)
  local wantName, wantReason = filterName or R.dryRun, filterReason or R.dryRun
  if not (wantName or wantReason) then return true end
  local okN, nameLen = true, 0
  local okR, reasonLen = true, 0
  if wantName then okN, nameLen = pcall(rcall, "HSTRLEN", key, "name") end
  if wantReason then okR, reasonLen = pcall(rcall, "HSTRLEN", key, "failedReason") end
  if not (okN and okR) then
    -- Not a hash: with no filter it is a match whose retry reports the error.
    if filterName or filterReason then return "unexamined" end
    return true
  end
  local fetchName = filterName or (wantName and nameLen <= PREVIEW_FETCH)
  local fetchReason = filterReason or (wantReason and reasonLen <= PREVIEW_FETCH)
  local bytes = (fetchName and nameLen or 0) + (fetchReason and reasonLen or 0)
  local work = filterReason and math.ceil(reasonLen / 16) or 0
  if bytes > bytesBudget or work > workBudget then return "unexamined" end
  if bytes > bytesLeft or work > workLeft then return nil end
  local name = fetchName and rcall("HGET", key, "name") or nil
  local reason = fetchReason and rcall("HGET", key, "failedReason") or nil
  bytesLeft, workLeft = bytesLeft - bytes, workLeft - work
  if filterReason and not (reason and string.find(reason, reasonNeedle, 1, true)) then
    return false
  end
  local shownName = name or (nameLen > 0 and ("(a name of " .. nameLen .. " bytes)")) or nil
  local shownReason = reason or (reasonLen > 0 and ("(a failed reason of " .. reasonLen .. " bytes)")) or nil
  if not filterName then return true, shownName, shownReason end
  if not name then return false end
  for _, G in ipairs(globs) do
    local v, steps = globMatch(name, G, workLeft)
    workLeft = workLeft - steps
    if v == nil then return first and "unexamined" or nil end
    if v then return true, name, shownReason end
  end
  return false
end

-- The window's jobs are the ranks before the first job at or after `upper`; this call's page
-- is the next `budget` of them (so no score needs parsing per job).
local windowEnd = rcall("ZCOUNT", stateKey, "-inf", "(" .. upper)
local last = math.min(start + budget, windowEnd) - 1
local page = last >= start and rcall("ZRANGE", stateKey, start, last, "WITHSCORES") or {}
local results, moves, names, reasons = {}, {}, {}, {}
local oldest, newest = "", ""
local done = start + budget >= windowEnd
local callUnexamined = 0
-- Without a filter, a real run reads nothing of a job before its retry.
local mustExamine = filterName or filterReason or R.dryRun
-- Matches this call may still make (the page ends before the job after them).
local wanted = math.max(1, math.min(retryBudget, maxJobs - (matched - parked)))

-- First the filter: the page's jobs in order, until one does not fit in what is left of the
-- call, or enough have passed it. `verdicts[k]` for the k-th job examined: true, false or
-- "unexamined"; the ids that passed in `passed`.
local verdicts, shownNames, shownReasons, passed = {}, {}, {}, {}
local examined, npassed = 0, 0
for i = 1, #page, 2 do
  local id = page[i]
  if npassed >= wanted then done = false break end
  local take, name, reason = true, nil, nil
  if mustExamine then take, name, reason = examine(R.base .. id, i == 1) end
  if take == nil then done = false break end
  examined = examined + 1
  verdicts[examined] = take
  if take == true then
    npassed = npassed + 1
    passed[npassed] = id
  end
  if R.dryRun then shownNames[examined], shownReasons[examined] = name, reason end
end

-- The ledger entries of the jobs that passed, in one read (a job this run key retried before
-- is skipped: it failed again, behind the cursor, stamped by a worker whose clock runs
-- behind); for a policy run, how often its policy's runs retried each, one read a period.
local seenBefore, countNow, countBefore = {}, {}, {}
if npassed > 0 then
  local ledgerError
  seenBefore, ledgerError = ledgerRead(R, passed)
  if not seenBefore then return ledgerError end
  if guarded then
    countNow = chunked("HMGET", retriesNow, passed)
    countBefore = chunked("HMGET", retriesBefore, passed)
  end
end

-- Then the matches, in order: planned (reads only; nothing is written before every read).
local counted = {}
-- This call's counts by code ("E" for every error), in the order codes first occur.
local codes, callCounts = {}, {}
local callScanned, callMatched = 0, 0
local jobFields = R.jobFields
local nth = 0 -- of the jobs that passed
for k = 1, examined do
  local id, score = page[2 * k - 1], page[2 * k]
  scanned, callScanned = scanned + 1, callScanned + 1
  cs, cid = score, id
  local take = verdicts[k]
  if take == "unexamined" then
    callUnexamined = callUnexamined + 1
  elseif take == true then
    nth = nth + 1
  end
  if take == true and not seenBefore[nth] then
    matched, callMatched = matched + 1, callMatched + 1
    local prior = guarded and (tonumber(countNow[nth]) or 0) + (tonumber(countBefore[nth]) or 0) or 0
    local r, move
    if guarded and guardMax > 0 and prior >= guardMax then
      r, parked = "P", parked + 1
    else
      local key = R.base .. id
      local ok, f = pcall(rcall, "HMGET", key, unpack(jobFields))
      if not ok then
        r = "E" .. "job key " .. key .. " is not a hash"
      else
        r, move = planMove(R, id, f, key)
      end
    end
    local code = byte(r, 1) == 69 and "E" or r
    if not callCounts[code] then codes[#codes + 1] = code; callCounts[code] = 0 end
    callCounts[code] = callCounts[code] + 1
    if move then moves[#moves + 1] = move end
    if code == "1" or code == "W" then
      if rowsLeft ~= 0 then
        results[#results + 1] = id
        results[#results + 1] = r
        if rowsLeft > 0 then rowsLeft = rowsLeft - 1 end
      end
    else
      results[#results + 1] = id
      results[#results + 1] = r
    end
    if guarded and r ~= "P" then
      if prior >= 1 then refailed = refailed + 1 end
      if r == "1" then counted[#counted + 1] = id end
    end
    if R.dryRun then
      local n, why = cut(shownNames[k] or "", 200), cut(shownReasons[k] or "", 200)
      names[n] = (names[n] or 0) + 1
      reasons[why] = (reasons[why] or 0) + 1
    end
    if oldest == "" then oldest = score end
    newest = score
    if matched - parked >= maxJobs then done = true break end
  end
end

local q, dataError = nil, nil
if #moves > 0 then
  q, dataError = readQueueValues(R, moves)
  if not q then return dataError end
end
if not R.dryRun then
  if q then applyMoves(R, moves, q) end
  -- The policy's count of each job retried now, in the same call as its retry.
  if #counted > 0 then
    for _, id in ipairs(counted) do rcall("HINCRBY", retriesNow, id, 1) end
    rcall("PEXPIRE", retriesNow, guardTtl)
  end
  -- Results by code: one HINCRBY per code, not per job.
  for _, code in ipairs(codes) do rcall("HINCRBY", recordKey, "n:" .. code, callCounts[code]) end
  unexamined = unexamined + callUnexamined
  rcall("HSET", recordKey, "cs", cs, "cid", cid, "scanned", scanned, "matched", matched,
    "upper", upper, "done", done and "1" or "0", "unexamined", unexamined, "refailed", refailed)
  rcall("PEXPIRE", recordKey, R.ttl)
  if holder ~= "" then
    if done then rcall("DEL", lockKey) else rcall("SET", lockKey, holder, "PX", lockTtl) end
  end
else
  unexamined = callUnexamined
end

local function flat(counts)
  local out = {}
  for k, v in pairs(counts) do out[#out + 1] = k; out[#out + 1] = v end
  return out
end
local callFlat = {}
for _, code in ipairs(codes) do
  callFlat[#callFlat + 1] = code
  callFlat[#callFlat + 1] = callCounts[code]
end
local remaining = 0
if not done then
  remaining = rcall("ZCOUNT", stateKey, cs == "" and ARGV[11] or "(" .. cs, "(" .. upper)
end
return { done and "done" or "more", cs, cid, scanned, matched, remaining, results,
  flat(names), flat(reasons), oldest, newest, (wantTotals and not R.dryRun) and totals() or {},
  upper, unexamined, refailed, callScanned, callMatched, callFlat }
