--[[
  jobretry-operator: releases the queue-and-state lock of a selector run (select.lua) if its
  holder still holds it, so that the next run need not wait for it to expire. Runs alone.

  KEYS:
    1  lock          string: the queue-and-state lock
  ARGV:
    1  holder        the run key the lock must name

  Returns 1 if the lock was deleted, 0 if another run (or none) holds it.
]]
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
