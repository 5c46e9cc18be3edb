--[[
  jobretry-operator: the shared core of our retry scripts (retry.lua for job ids, select.lua
  for selector pages). It is prepended to each of them when the script is built
  (src/bullmq/scripts.rs, which also builds every call's KEYS and ARGV), so both retry a
  job through exactly the same code: what BullMQ's Job.retry() (the reprocessJob script)
  of one release does, for many jobs in one call.

  Our own code, written from the behaviour documented in the project's design notes. Uses
  only commands Redis 5.0 has (BullMQ's own minimum).

  KEYS (the queue's and the ledger, KEYS[1..11] of every script built on this core):
    1  base           P:Q:, the job key base (job keys are P:Q:<id>)
    2  events         P:Q:events, stream
    3  state          P:Q:<state>, zset, "failed" or "completed"
    4  wait           P:Q:wait, list
    5  paused         P:Q:paused, list (BullMQ 5 puts retried jobs of a paused queue here)
    6  meta           P:Q:meta, hash
    7  active         P:Q:active, list
    8  marker         P:Q:marker, zset
    9  prioritized    P:Q:prioritized, zset
    10 pc             P:Q:pc, string (priority counter)
    11 ledger         hash: job id -> "1@<owner>" for the jobs this run key retried; with
                      its buckets (see "Ledger buckets") the run key's exactly-once ledger

  ARGV (the run's settings, ARGV[1..8] of every script built on this core; see newRun):
    1  state                 "failed" | "completed"
    2  flags                 release flags (below)
    3  resetAttemptsMade     "1" | "0"
    4  resetAttemptsStarted  "1" | "0"
    5  dryRun                "1" | "0"
    6  owner                 the run's owner tag, written into its ledger entries
    7  ttl                   TTL in ms of the ledger and of the calling script's run record
    8  audit                 "" = no audit line; else the run's part of the line appended to
                             each retried job's log (see "Audit line" below)

  Release flags (src/bullmq/version.rs), letters:
    m = marker, events MAXLEN and the meta default (>= 5.1.7)
    c = global concurrency check (>= 5.9.0)
    p = flow parent update, in its fixed form (>= 5.58.2 / 5.79.2)
    w = a paused queue's jobs go to wait, not paused (>= 6.0.0)
    r = priority-aware: priority ~= 0 goes to prioritized (>= 6.3.15)

  Ledger buckets: a selector run (R.ledgerBuckets) records a job whose id is a canonical
  integer n (BullMQ's own ids; at most 15 digits) not in the ledger hash but as field
  n % 128 = "1" of the bucket hash <ledger>:b:<floor(n / 128)>, when that bucket exists or
  the call records at least BUCKET_MIN (8) jobs in it (a sparse selection stays in the hash). A bucket of at most 128
  small fields stays in Redis's compact hash encoding: a few bytes per job where a field of
  one hash of every retried id costs ~60, and its writes cost Redis less CPU (benches/README.md). Id runs write the ledger hash (their entries
  carry the owner tag, which tells a run's own earlier retry from another's); every run reads
  both, so a job is retried at most once per run key whichever kind of run retried it. A
  bucket entry reads as "1" (no owner).

  Per-job results: "1" retried, "W" would be retried (dry run), "-1" job hash missing,
  "-3" not in the state set, "L<v>" in the ledger already, "E<msg>" refused for this job.
  Whole-call error replies, after which nothing was written:
    "JOBRETRY <msg>"       a queue key has the wrong type (or the ledger key holds a job)
    "JOBRETRY_DATA <msg>"  a queue value the retry must parse is invalid (pc, meta.concurrency,
                           meta opts.maxLenEvents); checked only when a job is to be retried,
                           exactly where BullMQ's own script would parse it

  Audit line (spec.audit.jobLog): each job this call retries gets one line appended to its
  BullMQ log P:Q:<id>:logs, as BullMQ's Job.log (the addLog script) appends it: RPUSH, then,
  when the job's opts.keepLogs (stored as "kl") is set, LTRIM to its last keepLogs entries.
  The line is ARGV 8, then `; erased`, then what the retry erased, each only if the job had
  it (` nothing` if none), values as JSON strings:
    ` <failedReason|returnvalue>="<text>"` the text cut to 200 bytes at a character
        boundary; when cut, followed by ` <field>Bytes=<its length in bytes>` (a text over
        64 KiB, or over what is left of the call's 1 MiB for such reads, is not read at
        all: the text is then "" and the size says why)
    ` finishedOn="<ms>"`, and ` attemptsMade="<n>"` / ` attemptsStarted="<n>"` when a reset
        flag erases them.
  A job whose log key is not a list, or whose keepLogs is not an integer, is refused ("E",
  nothing written): BullMQ's own Job.log would fail on it after the retry.

  Guarantee: every read, type check and value check happens before the first write, so a
  refused job or call is never half-retried.
]]
local rcall = redis.call

-- Audit lines: at most AUDIT_TEXT_MAX bytes of the erased text are copied into a line; a text
-- over AUDIT_READ_MAX bytes, or over what is left of the call's AUDIT_CALL_MAX, is not read at
-- all (HSTRLEN first): the line then gives its size only. So a call reads a bounded amount.
local AUDIT_TEXT_MAX, AUDIT_READ_MAX, AUDIT_CALL_MAX = 200, 65536, 1048576

-- The job fields the retry reads: priority, parentKey, opts; with the audit line on, also
-- the ones it reports as erased (read in the same HMGET).
local JOB_FIELDS = { "priority", "parentKey", "opts" }
local AUDIT_JOB_FIELDS = { "priority", "parentKey", "opts", "finishedOn", "atm", "ats" }

local function keyType(key)
  return rcall("TYPE", key)["ok"]
end

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

-- The run's settings and the queue's keys.
local function newRun(state, flags, resetAtm, resetAts, dryRun, owner, ttl, audit)
  local function has(letter) return string.find(flags, letter, 1, true) ~= nil end
  return {
    base = KEYS[1], events = KEYS[2], stateKey = KEYS[3], wait = KEYS[4], paused = KEYS[5],
    meta = KEYS[6], active = KEYS[7], marker = KEYS[8], prioritized = KEYS[9], pc = KEYS[10],
    ledger = KEYS[11],
    state = state, resetAtm = resetAtm == "1", resetAts = resetAts == "1",
    dryRun = dryRun == "1", owner = owner, ttl = tonumber(ttl),
    audit = (audit ~= nil and audit ~= "" and dryRun ~= "1") and audit or nil,
    auditBytesLeft = AUDIT_CALL_MAX,
    jobFields = (audit ~= nil and audit ~= "" and dryRun ~= "1") and AUDIT_JOB_FIELDS or JOB_FIELDS,
    withMarker = has("m"), withConcurrency = has("c"), withParent = has("p"),
    toWaitWhenPaused = has("w"), priorityAware = has("r"),
  }
end

-- Queue keys must be absent or of BullMQ's type; the ledger must not be a job's hash.
-- `extra` lists more {key, type} pairs of the calling script. Returns an error reply or nil.
local function checkKeyTypes(extra)
  local expected = { {KEYS[2], "stream"}, {KEYS[3], "zset"}, {KEYS[4], "list"}, {KEYS[5], "list"},
    {KEYS[6], "hash"}, {KEYS[7], "list"}, {KEYS[8], "zset"}, {KEYS[9], "zset"},
    {KEYS[10], "string"}, {KEYS[11], "hash"} }
  for _, e in ipairs(extra or {}) do expected[#expected + 1] = e end
  for _, e in ipairs(expected) do
    local t = keyType(e[1])
    if t ~= "none" and t ~= e[2] then
      return redis.error_reply("JOBRETRY key " .. e[1] .. " is a " .. t .. ", expected a " .. e[2])
    end
  end
  local opts = rcall("HGET", KEYS[11], "opts")
  if opts and string.sub(opts, 1, 2) ~= "1@" then
    return redis.error_reply("JOBRETRY the ledger key " .. KEYS[11] .. " holds a BullMQ job, not a ledger")
  end
  return nil
end

-- The bucket and field of a job id in the ledger's buckets, or nil: only canonical integers
-- of at most 15 digits (exact in Lua's numbers) go there.
local LEDGER_BUCKET = 128
-- A bucket's field names, "0" to "127" (a literal: formatting numbers costs more per job).
local BUCKET_FIELDS = { [0] = "0",
  "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
  "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32",
  "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46", "47", "48",
  "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60", "61", "62", "63", "64",
  "65", "66", "67", "68", "69", "70", "71", "72", "73", "74", "75", "76", "77", "78", "79", "80",
  "81", "82", "83", "84", "85", "86", "87", "88", "89", "90", "91", "92", "93", "94", "95", "96",
  "97", "98", "99", "100", "101", "102", "103", "104", "105", "106", "107", "108", "109", "110", "111", "112",
  "113", "114", "115", "116", "117", "118", "119", "120", "121", "122", "123", "124", "125", "126", "127" }
local function ledgerBucket(id)
  if #id > 15 or not (id == "0" or string.find(id, "^[1-9]%d*$")) then return nil end
  local n = tonumber(id)
  local f = n % LEDGER_BUCKET
  return (n - f) / LEDGER_BUCKET, BUCKET_FIELDS[f]
end

local function bucketKey(R, b) return R.ledger .. ":b:" .. b end

-- The ledger buckets of `ids`: per bucket, in first-seen order, the positions in `ids` and the
-- field names of its ids (`skip[i]` true: left out); and the positions of the ids that are
-- not canonical integers.
local function bucketGroups(ids, skip)
  local groups, order, rest = {}, {}, {}
  for i, id in ipairs(ids) do
    if not (skip and skip[i]) then
      local b, f = ledgerBucket(id)
      if b then
        local g = groups[b]
        if not g then
          g = { idx = {}, fields = {} }
          groups[b] = g
          order[#order + 1] = b
        end
        g.idx[#g.idx + 1] = i
        g.fields[#g.fields + 1] = f
      else
        rest[#rest + 1] = i
      end
    end
  end
  return groups, order, rest
end

-- The ledger entries of `ids` (a list; false where there is none), from the ledger hash and
-- the buckets. Checks every bucket it reads (a bucket a write may go to is always read
-- first): absent, or a hash that holds no job. Returns the list, or nil and an error reply.
local function ledgerRead(R, ids)
  local seen = rcall("EXISTS", R.ledger) == 1 and chunked("HMGET", R.ledger, ids) or {}
  local groups, order = bucketGroups(ids, seen)
  R.bucketExists = {}
  for _, b in ipairs(order) do
    local key = bucketKey(R, b)
    local t = keyType(key)
    if t ~= "none" then
      R.bucketExists[b] = true
      if t ~= "hash" or rcall("HEXISTS", key, "opts") == 1 then
        return nil, redis.error_reply("JOBRETRY the ledger bucket " .. key .. " is a " .. t ..
          (t == "hash" and " that holds a BullMQ job" or "") .. ", expected a ledger bucket")
      end
      local g = groups[b]
      local v = chunked("HMGET", key, g.fields)
      for j, x in ipairs(v) do
        if x then seen[g.idx[j]] = x end
      end
    end
  end
  return seen
end

-- A bucket is started only for at least this many jobs of one call: a bucket key costs about
-- 100 bytes before its first entry, so a sparse selection (a filter that matches one job in a
-- hundred) stays in the ledger hash, where each entry costs about 60.
local BUCKET_MIN = 8

-- Records `moved` in the ledger: a selector run's integer ids in buckets (read, so checked, by
-- ledgerRead in the same call) that exist or that this call gives at least BUCKET_MIN jobs,
-- the rest in the ledger hash; refreshes their TTL.
local function ledgerWrite(R, moved)
  local entry = "1@" .. R.owner
  local fields, nfld = {}, 0
  local function toHash(id)
    fields[nfld + 1] = id
    fields[nfld + 2] = entry
    nfld = nfld + 2
    if nfld >= 5000 then
      rcall("HSET", R.ledger, unpack(fields, 1, nfld))
      nfld = 0
    end
  end
  local groups, order, buckets = {}, {}, {}
  if R.ledgerBuckets then
    local rest
    groups, order, rest = bucketGroups(moved)
    for _, i in ipairs(rest) do toHash(moved[i]) end
  else
    for _, id in ipairs(moved) do toHash(id) end
  end
  for _, b in ipairs(order) do
    local g = groups[b]
    if R.bucketExists[b] or #g.idx >= BUCKET_MIN then
      buckets[#buckets + 1] = b
    else
      for _, i in ipairs(g.idx) do toHash(moved[i]) end
    end
  end
  if nfld > 0 then rcall("HSET", R.ledger, unpack(fields, 1, nfld)) end
  rcall("PEXPIRE", R.ledger, R.ttl)
  for _, b in ipairs(buckets) do
    local key, f = bucketKey(R, b), groups[b].fields
    local kv = {}
    for j = 1, #f do
      kv[2 * j - 1] = f[j]
      kv[2 * j] = "1"
    end
    for i = 1, #kv, 5000 do rcall("HSET", key, unpack(kv, i, math.min(i + 4999, #kv))) end
    rcall("PEXPIRE", key, R.ttl)
  end
end

-- The job's stored opts, as BullMQ's client parses them before retrying; nil if unreadable.
-- Jobs of one producer mostly store the same opts text: each distinct text is decoded once
-- per call (the decoded table is only read), which is exact, since the text decides.
local decodedOpts = {}
local function readOpts(raw)
  if not raw then return {} end
  local known = decodedOpts[raw]
  if known ~= nil then return known or nil end
  local ok, decoded = pcall(cjson.decode, raw)
  if not ok or type(decoded) ~= "table" then decoded = false end
  decodedOpts[raw] = decoded
  return decoded or nil
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

-- s cut to at most n bytes, never inside a UTF-8 character (a byte and the continuation
-- bytes 0x80-0xBF after it).
local function cut(s, n)
  if #s <= n then return s end
  local e = n
  while e > 0 do
    local c = string.byte(s, e + 1)
    if c < 0x80 or c > 0xBF then break end
    e = e - 1
  end
  -- e is now the end of a character, or 0 when the first n+1 bytes are all continuations
  return string.sub(s, 1, e)
end

local JSON_ESCAPES = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
-- s as a JSON string (quotes, backslashes and control characters escaped; no other change).
local function quoted(s)
  return '"' .. string.gsub(s, '[%c"\\]', function(c)
    return JSON_ESCAPES[c] or string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

-- Plans the audit line of the job at `jobKey` (reads only); `f` holds its R.jobFields.
-- Returns the line and the job's keepLogs (false = no trim), or nil and the refusal text.
local function planAudit(R, jobKey, opts, f)
  local logs = jobKey .. ":logs"
  local t = keyType(logs)
  if t ~= "none" and t ~= "list" then
    return nil, "the job's log key " .. logs .. " is a " .. t .. ", expected a list"
  end
  -- Job.log trims when keepLogs is set (truthy, as the client reads it) to its last keepLogs
  -- entries; the addLog script parses it as a number.
  local kl = opts["kl"]
  local keep = false
  if truthy(kl) then
    local n = tonumber(kl)
    if not n or n ~= n or n ~= math.floor(n) or math.abs(n) > 1e15 then
      return nil, "the job's opts.keepLogs is " .. cut(tostring(kl), 40) .. ", not an integer; BullMQ's Job.log fails on it"
    end
    keep = n
  end
  local erased = R.state == "failed" and "failedReason" or "returnvalue"
  local parts = { R.audit, "; erased" }
  local len = rcall("HSTRLEN", jobKey, erased)
  if len > 0 then
    local text = ""
    if len <= AUDIT_READ_MAX and len <= R.auditBytesLeft then
      R.auditBytesLeft = R.auditBytesLeft - len
      text = cut(rcall("HGET", jobKey, erased) or "", AUDIT_TEXT_MAX)
    end
    parts[#parts + 1] = " " .. erased .. "=" .. quoted(text)
    if #text < len then parts[#parts + 1] = " " .. erased .. "Bytes=" .. len end
  end
  if f[4] then parts[#parts + 1] = " finishedOn=" .. quoted(cut(f[4], 24)) end
  if R.resetAtm and f[5] then parts[#parts + 1] = " attemptsMade=" .. quoted(cut(f[5], 24)) end
  if R.resetAts and f[6] then parts[#parts + 1] = " attemptsStarted=" .. quoted(cut(f[6], 24)) end
  if #parts == 2 then parts[3] = " nothing" end
  return table.concat(parts), keep
end

-- Plans the retry of job `id` (reads only), known to be in the state set. `f` holds its
-- R.jobFields as HMGET returned them; `jobKey` its key if the caller has it. Returns the
-- result code and, for "1"/"W", its move.
local function planMove(R, id, f, jobKey)
  jobKey = jobKey or R.base .. id
  if not (f[1] or f[2] or f[3]) and rcall("EXISTS", jobKey) == 0 then return "-1" end
  local opts = readOpts(f[3])
  if not opts then return "E" .. "the job's opts field is not valid JSON; BullMQ cannot load the job" end
  local move = { id = id, key = jobKey, lifo = truthy(opts["lifo"]) }
  if R.audit then
    local line, keep = planAudit(R, jobKey, opts, f)
    if not line then return "E" .. tostring(keep) end
    move.line, move.keepLogs = line, keep
  end
  if R.priorityAware then
    local prio = tonumber(f[1]) or 0
    if prio ~= prio then return "E" .. "the job's priority field " .. tostring(f[1]) .. " is not a number" end
    if prio ~= 0 then move.prio = prio end
  end
  if R.withParent and f[2] then
    local parent, perr = checkParent(f[2])
    if perr then return "E" .. perr end
    move.parent = parent
  end
  return R.dryRun and "W" or "1", move
end

-- A Redis integer as string2ll reads it (no sign '+', no leading zeros, no spaces).
local function isRedisInteger(s, allowNegative)
  if s == "0" then return true end
  local pattern = allowNegative and "^%-?[1-9]%d*$" or "^[1-9]%d*$"
  return string.find(s, pattern) ~= nil and #s <= 18
end

-- Reads and checks the queue-wide values the retry of `moves` parses, where BullMQ's script
-- would parse them. Returns the facts for applyMoves, or nil and an error reply.
local function readQueueValues(R, moves)
  local function dataError(msg) return nil, redis.error_reply("JOBRETRY_DATA " .. msg) end
  local meta = rcall("HMGET", R.meta, "paused", "concurrency", "opts.maxLenEvents")
  local q = { paused = meta[1] ~= false, maxLen = meta[3] }
  q.pausedOrMaxed = q.paused
  if not q.paused and R.withConcurrency and meta[2] then
    local limit = tonumber(meta[2])
    if not limit then
      return dataError(R.meta .. " field concurrency is " .. meta[2] .. ", not a number; fix or delete it (Queue.setGlobalConcurrency)")
    end
    q.pausedOrMaxed = rcall("LLEN", R.active) >= limit
  end
  if R.withMarker and q.maxLen and not isRedisInteger(q.maxLen, false) then
    return dataError(R.meta .. " field opts.maxLenEvents is " .. q.maxLen .. ", not a non-negative integer; fix it (the queue's streams.events.maxLen)")
  end
  for _, m in ipairs(moves) do
    if m.prio then
      local pc = rcall("GET", R.pc)
      if pc and not isRedisInteger(pc, true) then
        return dataError("priority counter " .. R.pc .. " is " .. pc .. ", not an integer; fix it before retrying prioritized jobs")
      end
      break
    end
  end
  return q
end

-- Writes the retries of `moves`, in an order whose end state equals one reprocessJob call
-- per job, and records them in the ledger.
local function applyMoves(R, moves, q)
  local resetFields = { "finishedOn", "processedOn", R.state == "failed" and "failedReason" or "returnvalue" }
  if R.resetAtm then resetFields[#resetFields + 1] = "atm" end
  if R.resetAts then resetFields[#resetFields + 1] = "ats" end
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
  chunked("ZREM", R.stateKey, moved)

  local target = R.wait
  if q.paused and not R.toWaitWhenPaused then target = R.paused end
  if #fifo > 0 then chunked("LPUSH", target, fifo) end
  if #lifo > 0 then chunked("RPUSH", target, lifo) end
  if #prioritized > 0 then
    local last = rcall("INCRBY", R.pc, #prioritized)
    local first = last - #prioritized + 1
    for k, m in ipairs(prioritized) do
      rcall("ZADD", R.prioritized, m.prio * 0x100000000 + (first + k - 1) % 0x100000000, m.id)
    end
  end
  if R.withMarker and not q.pausedOrMaxed then rcall("ZADD", R.marker, 0, "0") end

  for _, m in ipairs(moves) do
    if m.parent then
      local deps = m.parent .. ":dependencies"
      if R.state == "failed" then
        if rcall("ZREM", m.parent .. ":unsuccessful", m.key) == 1 or
           rcall("HDEL", m.parent .. ":failed", m.key) == 1 then
          rcall("SADD", deps, m.key)
        end
      elseif rcall("HDEL", m.parent .. ":processed", m.key) == 1 then
        rcall("SADD", deps, m.key)
      end
    end
  end

  if R.withMarker then
    local maxLen = q.maxLen
    if not maxLen then
      maxLen = 10000
      rcall("HSET", R.meta, "opts.maxLenEvents", maxLen)
    end
    for _, id in ipairs(moved) do
      rcall("XADD", R.events, "MAXLEN", "~", maxLen, "*", "event", "waiting", "jobId", id, "prev", R.state)
    end
  else
    for _, id in ipairs(moved) do
      rcall("XADD", R.events, "*", "event", "waiting", "jobId", id, "prev", R.state)
    end
  end

  -- The audit lines, as Job.log appends them (after the retry, as a client would log).
  for _, m in ipairs(moves) do
    if m.line then
      local logs = m.key .. ":logs"
      rcall("RPUSH", logs, m.line)
      if m.keepLogs then rcall("LTRIM", logs, -m.keepLogs, -1) end
    end
  end

  ledgerWrite(R, moved)
end
