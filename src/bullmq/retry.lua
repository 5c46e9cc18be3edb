--[[
  jobretry-operator: retry a batch of finished BullMQ jobs by id, exactly as BullMQ's
  Job.retry() of one release would retry each of them, in one atomic call. Runs after
  core.lua (prepended when the script is built), which documents KEYS 1-11, the release
  flags, the result codes and the error replies.

  KEYS (after core.lua's 1-11):
    12 record        hash: the run record, where the run's position in its id list is
                     kept, per object (field "ids:<owner>"), in the same call as the batch
  ARGV (after core.lua's 1-8):
    9  position      the run's position after this batch (recorded unless a dry run)
    10… ids          job ids

  Returns one result string per id, in order.
]]
local R = newRun(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])

local refusedRecord = checkKeyTypes({ {KEYS[12], "hash"} })
if refusedRecord then return refusedRecord end
local ids = {}
for i = 10, #ARGV do ids[#ids + 1] = ARGV[i] end
local results = {}
if #ids == 0 then return results end
local function recordPosition()
  if not R.dryRun then
    rcall("HSET", KEYS[12], "ids:" .. R.owner, ARGV[9])
    rcall("PEXPIRE", KEYS[12], R.ttl)
  end
end

local ledger, ledgerError = ledgerRead(R, ids)
if not ledger then return ledgerError end

-- Plan every job; nothing is written yet.
local moves, seen = {}, {}
for i, id in ipairs(ids) do
  local r, move
  if ledger[i] then
    r = "L" .. ledger[i]
  elseif seen[id] then
    r = "-3"
  else
    seen[id] = true
    local ok, f = pcall(rcall, "HMGET", R.base .. id, unpack(R.jobFields))
    if not ok then
      r = "E" .. "job key " .. R.base .. id .. " is not a hash"
    elseif not (f[1] or f[2] or f[3]) and rcall("EXISTS", R.base .. id) == 0 then
      r = "-1"
    elseif not rcall("ZSCORE", R.stateKey, id) then
      r = "-3"
    else
      r, move = planMove(R, id, f)
    end
  end
  results[i] = r
  if move then moves[#moves + 1] = move end
end
if #moves == 0 then
  recordPosition()
  return results
end

local q, dataError = readQueueValues(R, moves)
if not q then return dataError end
if R.dryRun then return results end
applyMoves(R, moves, q)
recordPosition()
return results
